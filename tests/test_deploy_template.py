"""deploy/imgpipe.yaml as a file: cfn-lint, the rules that keep it private and least-privilege,
and its cloud-init user data through Debian's `cloud-init schema`."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.cloudformation import TEMPLATE, check_parameters, load_template
from imgpipe.errors import UserError

SUB_VALUES = {"AWS::StackName": "imgpipe", "AWS::Region": "us-east-1", "GitRef": "main",
              "RepositoryUrl": "https://example.org/imgpipe.git", "ImageBucket": "imgpipe-123-us-east-1-abc",
              "RawPrefix": "raw/", "ProcessedPrefix": "processed/",
              "EventQueue": "https://sqs.us-east-1.amazonaws.com/123456789012/q",
              "SetupWaitHandle": "https://cloudformation-waitcondition-us-east-1.s3.amazonaws.com/x?sig=1",
              "EmrServiceRole": "imgpipe-EmrServiceRole-1", "EmrInstanceProfile": "imgpipe-EmrInstanceProfile-1",
              "PublicSubnet": "subnet-0123", "FleetSecretArn": "", "FleetMaxHosts": "0", "FleetHostVcpus": "2",
              "EnricherEnabled": "false", "Host.PrivateIp": "10.80.0.10", "ConsumerHostsMax": "4",
              "FleetSecret": "arn:aws:secretsmanager:us-east-1:123456789012:secret:imgpipe-fleet-AbCdEf"}


@pytest.fixture(scope="module")
def template() -> dict:
    return load_template()


@pytest.fixture(scope="module")
def resources(template) -> dict:
    return template["Resources"]


def of_type(resources: dict, kind: str) -> dict:
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def statements(role: dict) -> list[dict]:
    return [s for policy in role["Properties"].get("Policies", [])
            for s in policy["PolicyDocument"]["Statement"]]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def user_data(resources: dict, name: str = "Host") -> str:
    """The user data as the host (or a fleet host: name FleetLaunchTemplate) gets it, with the
    stack's values in place of ${...}."""
    props = resources[name]["Properties"]
    props = props.get("LaunchTemplateData", props)
    text, _ = props["UserData"]["Fn::Base64"]["Fn::Sub"]
    return re.sub(r"\$\{([^}!]+)\}", lambda m: SUB_VALUES[m.group(1)], text)


def test_cfn_lint_finds_nothing_even_informational():
    cfn_lint = shutil.which("cfn-lint", path=str(Path(sys.executable).parent))
    assert cfn_lint, "cfn-lint is pinned in requirements-dev.txt"
    result = subprocess.run([cfn_lint, "--include-checks", "I", "--regions", "us-east-1", "eu-west-1", "--",
                             str(TEMPLATE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_cfn_lint_does_catch_a_broken_template(tmp_path):
    """The check above can fail: a security group rule without its protocol is reported."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE.read_text().replace("        - IpProtocol: tcp\n          FromPort: 22",
                                                   "        - FromPort: 22"))
    cfn_lint = shutil.which("cfn-lint", path=str(Path(sys.executable).parent))
    result = subprocess.run([cfn_lint, "--", str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "IpProtocol" in result.stdout


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "10.0.0.0/0", "203.0.113.7", "203.0.113.7/33", "::/0",
                                  "256.1.1.1/32", "0.0.0.0/0 ", "1.2.3.4/32\n0.0.0.0/0"])
def test_ssh_cidr_refuses_the_world_and_nonsense(template, cidr):
    with pytest.raises(UserError, match="SshCidr"):
        check_parameters(template, {"SshCidr": cidr}, creating=False)


@pytest.mark.parametrize("cidr", ["203.0.113.7/32", "198.51.100.0/24", "10.0.0.0/8", "1.0.0.0/1"])
def test_ssh_cidr_accepts_real_networks(template, cidr):
    check_parameters(template, {"SshCidr": cidr}, creating=False)


def test_the_world_is_refused_by_the_template_itself_too(template):
    """AWS enforces these even when the stack is made without `python -m deploy`."""
    spec = template["Parameters"]["SshCidr"]
    assert "Default" not in spec
    assert not re.fullmatch(spec["AllowedPattern"], "0.0.0.0/0")
    [assertion] = template["Rules"]["SshIsNeverOpenToTheWorld"]["Assertions"]
    assert assertion["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "SshCidr"}, "0.0.0.0/0"]}]}


def test_create_needs_cidr_key_repository_and_ref(template):
    with pytest.raises(UserError) as raised:
        check_parameters(template, {}, creating=True)
    for name in ("SshCidr", "KeyName", "RepositoryUrl", "GitRef"):
        assert f"{name} is required" in str(raised.value)


def test_only_ssh_from_the_given_cidr_comes_in_and_the_fleet_reaches_kafka_and_meilisearch_only(resources):
    groups = of_type(resources, "AWS::EC2::SecurityGroup")
    assert sorted(groups) == ["FleetSecurityGroup", "HostSecurityGroup"]
    [rule] = groups["HostSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert rule == {**rule, "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": {"Ref": "SshCidr"}}
    assert "CidrIpv6" not in rule
    assert resources["Host"]["Properties"]["SecurityGroupIds"] == [{"Ref": "HostSecurityGroup"}]
    # The fleet: SSH only through the host; no CIDR at all.
    [fleet_rule] = groups["FleetSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert fleet_rule["SourceSecurityGroupId"] == {"Ref": "HostSecurityGroup"} and fleet_rule["FromPort"] == 22
    # The host's Kafka SASL_SSL listener and MeiliSearch: from the fleet's group, nothing else.
    extra = of_type(resources, "AWS::EC2::SecurityGroupIngress")
    assert {(r["Properties"]["FromPort"], r["Properties"]["ToPort"]) for r in extra.values()} == {(9094, 9094),
                                                                                                 (7700, 7700)}
    for name, ingress in extra.items():
        props = ingress["Properties"]
        assert ingress["Condition"] == "HasFleet", name
        assert props["GroupId"] == {"Ref": "HostSecurityGroup"}, name
        assert props["SourceSecurityGroupId"] == {"Ref": "FleetSecurityGroup"}, name
        assert not {"CidrIp", "CidrIpv6"} & set(props), name


def test_the_fleet_is_an_auto_scaling_group_tracking_cpu_and_replaced_on_a_new_launch_template(template, resources):
    assert template["Parameters"]["ConsumerHosts"]["Default"] == 0  # no fleet unless asked
    assert template["Conditions"]["HasFleet"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ConsumerHosts"}, 0]}]}
    fleet = {name for name, r in resources.items() if r.get("Condition") == "HasFleet"}
    assert {"FleetGroup", "FleetLaunchTemplate", "FleetCpuTracking", "FleetRole", "FleetInstanceProfile",
            "FleetSecret", "FleetSecurityGroup", "HostKafkaFromFleet", "HostMeiliFromFleet", "HostFleetSecretPolicy"} == fleet
    group = resources["FleetGroup"]
    assert group["Properties"]["MinSize"] == {"Ref": "ConsumerHosts"}
    assert group["Properties"]["MaxSize"] == {"Ref": "ConsumerHostsMax"}
    assert group["Properties"]["LaunchTemplate"]["Version"] == {
        "Fn::GetAtt": ["FleetLaunchTemplate", "LatestVersionNumber"]}
    assert group["UpdatePolicy"]["AutoScalingRollingUpdate"]["MaxBatchSize"] == 1
    assert "SetupDone" in group["DependsOn"]  # the host has put the credentials in the secret first
    tracking = resources["FleetCpuTracking"]["Properties"]
    assert tracking["PolicyType"] == "TargetTrackingScaling"
    assert tracking["TargetTrackingConfiguration"]["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "ASGAverageCPUUtilization"}
    data = resources["FleetLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert all(d["Ebs"]["Encrypted"] is True for d in data["BlockDeviceMappings"])
    assert data["IamInstanceProfile"] == {"Arn": {"Fn::GetAtt": ["FleetInstanceProfile", "Arn"]}}
    # The secret is made empty: the host generates its contents, never the template.
    assert set(resources["FleetSecret"]["Properties"]) == {"Description"}


def test_the_fleet_runs_the_same_cloud_init_with_the_consumer_role(resources):
    host, fleet = yaml.safe_load(user_data(resources)), yaml.safe_load(user_data(resources, "FleetLaunchTemplate"))
    host_files = {f["path"]: f for f in host["write_files"]}
    fleet_files = {f["path"]: f for f in fleet["write_files"]}
    bootstrap = "/usr/local/sbin/imgpipe-bootstrap"
    assert host_files[bootstrap] == fleet_files[bootstrap] and host["runcmd"] == fleet["runcmd"]
    assert "/etc/imgpipe/setup-signal-url" not in fleet_files  # nothing waits for a fleet host
    env = dict(line.split("=", 1) for line in fleet_files["/etc/imgpipe/deploy.env"]["content"].splitlines())
    assert env["IMGPIPE_ROLE"] == "consumer" and env["IMGPIPE_MAIN_HOST"] == "10.80.0.10"
    assert env["IMGPIPE_ENRICHER"] == "false" and env["FLEET_SECRET_ARN"].startswith("arn:aws:secretsmanager:")
    assert not {"openjdk-17-jre-headless", "maven", "npm"} & set(fleet["packages"])  # no Kafka, no MeiliSearch
    host_env = dict(line.split("=", 1) for line in host_files["/etc/imgpipe/deploy.env"]["content"].splitlines())
    assert host_env["IMGPIPE_ROLE"] == "main"
    for text in (user_data(resources), user_data(resources, "FleetLaunchTemplate")):
        assert "MEILI" not in text and "PASSWORD" not in text.upper() and "BEGIN" not in text


@pytest.mark.parametrize("name", ["Host", "FleetLaunchTemplate"])
def test_the_fleet_user_data_passes_cloud_init_schema_too(resources, tmp_path, name):
    path = tmp_path / "user-data.yaml"
    path.write_text(user_data(resources, name))
    result = subprocess.run([shutil.which("cloud-init") or "cloud-init", "schema", "--config-file", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Valid cloud-config" in result.stdout, result.stdout + result.stderr


def test_the_host_requires_imdsv2_and_encrypts_its_disk(resources):
    host = resources["Host"]["Properties"]
    assert host["MetadataOptions"]["HttpTokens"] == "required"
    assert host["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    [disk] = host["BlockDeviceMappings"]
    assert disk["Ebs"]["Encrypted"] is True
    assert host["IamInstanceProfile"] == {"Ref": "HostInstanceProfile"}


def test_the_bucket_is_private_encrypted_kept_and_notifies_the_queue_of_raw_objects(resources):
    bucket = resources["ImageBucket"]
    assert bucket["DeletionPolicy"] == "Retain"
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"}
    configs = props["NotificationConfiguration"]["QueueConfigurations"]
    assert sorted(c["Event"] for c in configs) == ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
    for config in configs:
        assert config["Queue"] == {"Fn::GetAtt": ["EventQueue", "Arn"]}
        assert config["Filter"]["S3Key"]["Rules"] == [{"Name": "prefix", "Value": {"Ref": "RawPrefix"}}]
    assert resources["EventQueue"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["DeadLetterQueue", "Arn"]}


def test_only_this_bucket_of_this_account_may_send_to_the_queue(resources):
    [statement] = resources["EventQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"} and statement["Action"] == "sqs:SendMessage"
    source_arn = statement["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::Sub"]
    bucket_name = resources["ImageBucket"]["Properties"]["BucketName"]["Fn::Sub"]
    # The same name, built the same way: the policy names exactly the stack's bucket.
    assert source_arn[0] == "arn:${AWS::Partition}:s3:::" + bucket_name[0] and source_arn[1] == bucket_name[1]
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}


def test_iam_statements_are_scoped(resources):
    roles = of_type(resources, "AWS::IAM::Role")
    assert set(roles) == {"HostRole", "EmrServiceRole", "EmrInstanceRole", "FleetRole"}
    for name, role in roles.items():
        for statement in statements(role):
            assert statement["Effect"] == "Allow", name
            for action in as_list(statement["Action"]):
                assert "*" not in action, f"{name}: wildcard action {action}"
            if statement["Resource"] == "*":
                # Only creating a cluster has no ARN before it exists: it must carry our tag.
                assert statement["Condition"]["StringEquals"] == {
                    "aws:RequestTag/created-by": "imgpipe mapreduce/run_job.py"}, name
    host = {s["Sid"]: s for s in statements(roles["HostRole"])}
    assert host["ListRawPrefix"]["Condition"]["StringLike"]["s3:prefix"] == [{"Fn::Sub": "${RawPrefix}*"}]
    assert host["WriteDerivedImages"]["Resource"] == {"Fn::Sub": "${ImageBucket.Arn}/${ProcessedPrefix}*"}
    assert sorted(host["ReceiveBucketEvents"]["Action"]) == [
        "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"]
    assert host["PassOnlyTheEmrRoles"]["Resource"] == [{"Fn::GetAtt": ["EmrServiceRole", "Arn"]},
                                                       {"Fn::GetAtt": ["EmrInstanceRole", "Arn"]}]
    assert roles["EmrServiceRole"]["Properties"]["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonEMRServicePolicy_v2"}]
    # The fleet: raw images in, derived images out, its secret; nothing else.
    fleet = {s["Sid"]: s for s in statements(roles["FleetRole"])}
    assert {sid: (sorted(as_list(s["Action"])), s["Resource"]) for sid, s in fleet.items()} == {
        "ReadRawImages": (["s3:GetObject"], {"Fn::Sub": "${ImageBucket.Arn}/${RawPrefix}*"}),
        "WriteDerivedImages": (["s3:DeleteObject", "s3:PutObject"], {"Fn::Sub": "${ImageBucket.Arn}/${ProcessedPrefix}*"}),
        "ReadFleetSecret": (["secretsmanager:GetSecretValue"], {"Ref": "FleetSecret"}),
    }
    host_secret = resources["HostFleetSecretPolicy"]
    assert host_secret["Condition"] == "HasFleet" and host_secret["Properties"]["RoleName"] == {"Ref": "HostRole"}
    [statement] = host_secret["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Resource"] == {"Ref": "FleetSecret"}
    assert sorted(statement["Action"]) == ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"]
    nodes = statements(roles["EmrInstanceRole"])
    assert {"Fn::Sub": "${ImageBucket.Arn}/emr/*"} in [s["Resource"] for s in nodes]


def test_the_user_data_passes_cloud_init_schema(resources, tmp_path):
    cloud_init = shutil.which("cloud-init")
    assert cloud_init, "Debian's cloud-init: `make test` installs it (tools/ensure-debian-packages.sh)"
    path = tmp_path / "user-data.yaml"
    path.write_text(user_data(resources))
    result = subprocess.run([cloud_init, "schema", "--config-file", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout
    # ... and the same check rejects a user data with a wrong type.
    path.write_text(user_data(resources).replace("package_update: true", "package_update: sometimes"))
    result = subprocess.run([cloud_init, "schema", "--config-file", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "package_update" in result.stdout + result.stderr


def test_the_user_data_fits_and_its_bootstrap_is_valid_bash(resources, tmp_path):
    text = user_data(resources)
    assert len(text.encode()) < 16 * 1024  # EC2's limit
    config = yaml.safe_load(text)
    files = {f["path"]: f for f in config["write_files"]}
    assert files["/etc/imgpipe/setup-signal-url"]["permissions"] == "0600"
    assert "MEILI" not in text  # no key of any kind in user data (any process on the host can read it)
    bootstrap = tmp_path / "bootstrap"
    bootstrap.write_text(files["/usr/local/sbin/imgpipe-bootstrap"]["content"])
    result = subprocess.run(["bash", "-n", str(bootstrap)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert config["runcmd"] == [["/usr/local/sbin/imgpipe-bootstrap"]]
    env = dict(line.split("=", 1) for line in files["/etc/imgpipe/deploy.env"]["content"].splitlines())
    assert env["SQS_QUEUE_URL"] == SUB_VALUES["EventQueue"] and env["IMGPIPE_GIT_REF"] == "main"
