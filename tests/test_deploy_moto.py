"""deploy/imgpipe.yaml on moto's CloudFormation, and `python -m deploy up|status|down` end to end.

moto runs as a real HTTP server on a free 127.0.0.1 port, in this process (ThreadedMotoServer) so
that the test can give it what moto lacks: the public SSM parameter of the Debian 12 AMI, and a
stack stuck in ROLLBACK_COMPLETE. The CLI reaches it through AWS_ENDPOINT_URL, like any boto3
program. What moto 5.2.5's CloudFormation does not apply (PublicAccessBlockConfiguration and
NotificationConfiguration of a bucket, SecurityGroupIds and MetadataOptions of an instance,
bucket and queue policies) is checked on the template in test_deploy_template.py; the bucket's
notification is also applied here through the S3 API, to see raw/ objects reach the queue.
"""
from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
import time
from urllib.parse import unquote_plus

import boto3
import pytest

from deploy import __main__ as deploy_cli
from deploy.cloudformation import load_template
from imgpipe.settings import REPO_ROOT

ACCOUNT = "123456789012"
REGION = "us-east-1"
DEBIAN_AMI_PARAMETER = "/aws/service/debian/release/12/latest/amd64"
UP = ["up", "--ssh-cidr", "203.0.113.7/32", "--key-name", "imgpipe-test",
      "--repository-url", "https://example.org/imgpipe.git", "--git-ref", "main", "--poll-seconds", "0.05"]


@pytest.fixture(scope="module")
def moto_url():
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.route_tables import RouteTable
    from moto.server import ThreadedMotoServer

    # moto 5.2.5's CloudFormation never deletes an AWS::EC2::RouteTable, so no stack with its own
    # VPC could be deleted; give it the missing delete (what AWS does: the routes go with it).
    def delete_route_table(cls, resource_name, cloudformation_json, account_id, region_name):
        ec2_backends[account_id][region_name].delete_route_table(resource_name)

    RouteTable.delete_from_cloudformation_json = classmethod(delete_route_table)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_url, monkeypatch, unique):
    """Credentials and region for moto, a key pair, the Debian AMI parameter, a fresh stack name."""
    from moto.ssm.models import Parameter, ssm_backends

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE", "DEPLOY_STACK_NAME", "DEPLOY_SSH_CIDR",
                 "DEPLOY_KEY_NAME", "DEPLOY_GIT_REF", "DEPLOY_REPOSITORY_URL", "DEPLOY_INSTANCE_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto_url)
    if not ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["imgpipe-test"]}])["KeyPairs"]:
        ec2.create_key_pair(KeyName="imgpipe-test")
    # moto refuses /aws/... names through the API (as AWS does) and has no Debian images: point
    # the public parameter at one of its AMIs.
    parameters = ssm_backends[ACCOUNT][REGION]._parameters
    if DEBIAN_AMI_PARAMETER not in parameters:
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        parameters[DEBIAN_AMI_PARAMETER].append(Parameter(
            account_id=ACCOUNT, name=DEBIAN_AMI_PARAMETER, value=image, parameter_type="String",
            description=None, allowed_pattern=None, keyid=None, last_modified_date=time.time(), version=1,
            data_type="aws:ec2:image"))
    monkeypatch.setenv("DEPLOY_STACK_NAME", f"imgpipe-{unique}")
    return {"url": moto_url, "stack": f"imgpipe-{unique}"}


def client(aws, service: str):
    return boto3.client(service, region_name=REGION, endpoint_url=aws["url"])


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = deploy_cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def printed_outputs(stdout: str) -> dict[str, str]:
    lines = [line.strip() for line in stdout.splitlines() if line.startswith("  ")]
    return dict(line.split(None, 1) for line in lines)


def physical_ids(aws) -> dict[str, str]:
    resources = client(aws, "cloudformation").describe_stack_resources(StackName=aws["stack"])["StackResources"]
    # moto lists the resources it skipped (policies, wait condition) without ids.
    return {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources
            if "LogicalResourceId" in r and r.get("PhysicalResourceId")}


def test_up_creates_the_stack_and_prints_its_outputs(aws, capsys):
    code, out, err = run(capsys, *UP)
    assert code == 0, err
    assert f"stack {aws['stack']} ({REGION}): created, CREATE_COMPLETE" in out
    outputs = printed_outputs(out)
    assert outputs["BucketName"].startswith(f"imgpipe-{ACCOUNT}-{REGION}-")
    assert outputs["QueueUrl"].startswith("https://sqs.") and "EventQueue" in outputs["QueueUrl"]
    assert outputs["TunnelCommand"].startswith("ssh -i ~/.ssh/imgpipe-test.pem -N -L 7700:127.0.0.1:7700 admin@")
    assert {"EmrServiceRole", "EmrJobFlowRole", "EmrSubnetId", "InstanceId", "DeadLetterQueueUrl"} <= set(outputs)
    assert "CREATE_COMPLETE" in err  # the events, as they came


def test_the_resources_exist_with_the_expected_properties(aws, capsys):
    assert run(capsys, *UP)[0] == 0
    ids = physical_ids(aws)
    ec2, iam, s3, sqs = (client(aws, s) for s in ("ec2", "iam", "s3", "sqs"))

    # Nothing open to the world: the stack's VPC has no 0.0.0.0/0 (or ::/0) ingress at all.
    vpc = ids["Vpc"]
    groups = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"]
    for group in groups:
        for permission in group["IpPermissions"]:
            assert all(r["CidrIp"] != "0.0.0.0/0" for r in permission.get("IpRanges", [])), group["GroupId"]
            assert all(r["CidrIpv6"] != "::/0" for r in permission.get("Ipv6Ranges", [])), group["GroupId"]
    [host_group] = [g for g in groups if g["GroupId"] == ids["HostSecurityGroup"]]
    assert [(p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p["IpRanges"]]) for p in host_group["IpPermissions"]] \
        == [(22, 22, ["203.0.113.7/32"])]

    # The host has the instance profile, whose role has the pipeline's policies.
    [reservation] = ec2.describe_instances(InstanceIds=[ids["Host"]])["Reservations"]
    [instance] = reservation["Instances"]
    assert instance["InstanceType"] == "m6i.large" and instance["KeyName"] == "imgpipe-test"
    assert instance["SubnetId"] == ids["PublicSubnet"]
    profile = iam.get_instance_profile(InstanceProfileName=ids["HostInstanceProfile"])["InstanceProfile"]
    assert instance["IamInstanceProfile"]["Arn"] == profile["Arn"]
    [role] = profile["Roles"]
    assert sorted(iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]) == ["consumer", "emr-runner",
                                                                                       "producer"]
    bucket = ids["ImageBucket"]
    producer = iam.get_role_policy(RoleName=role["RoleName"], PolicyName="producer")["PolicyDocument"]
    if isinstance(producer, str):  # moto stores a policy from CloudFormation as Python's repr of it
        producer = ast.literal_eval(producer)
    assert f"arn:aws:s3:::{bucket}/raw/*" in [s["Resource"] for s in producer["Statement"]]

    # The EMR roles run_job.py needs.
    emr_role = iam.get_role(RoleName=ids["EmrServiceRole"])["Role"]
    assert "elasticmapreduce.amazonaws.com" in json.dumps(emr_role["AssumeRolePolicyDocument"])
    # (moto attaches no AWS managed policy from ManagedPolicyArns; the template test checks it.)
    assert iam.list_role_policies(RoleName=ids["EmrServiceRole"])["PolicyNames"] == ["pass-node-role"]
    iam.get_instance_profile(InstanceProfileName=ids["EmrInstanceProfile"])

    # The bucket is encrypted; the queue sends what fails 5 times to the dead-letter queue.
    encryption = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    assert encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    queue = sqs.get_queue_attributes(QueueUrl=ids["EventQueue"], AttributeNames=["All"])["Attributes"]
    dead_letter = sqs.get_queue_attributes(QueueUrl=ids["DeadLetterQueue"], AttributeNames=["QueueArn"])
    assert json.loads(queue["RedrivePolicy"]) == {"deadLetterTargetArn": dead_letter["Attributes"]["QueueArn"],
                                                  "maxReceiveCount": 5}
    assert queue["ReceiveMessageWaitTimeSeconds"] == "20"


def test_the_buckets_notification_sends_raw_objects_and_only_those_to_the_queue(aws, capsys):
    """moto's CloudFormation skips NotificationConfiguration and PublicAccessBlockConfiguration:
    apply the template's own values through the S3 API and watch what reaches the queue."""
    assert run(capsys, *UP)[0] == 0
    ids = physical_ids(aws)
    bucket, queue_url = ids["ImageBucket"], ids["EventQueue"]
    s3, sqs = client(aws, "s3"), client(aws, "sqs")
    props = load_template()["Resources"]["ImageBucket"]["Properties"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [
        {"Events": [c["Event"]], "QueueArn": queue_arn,
         "Filter": {"Key": {"FilterRules": [{"Name": r["Name"], "Value": "raw/"}
                                            for r in c["Filter"]["S3Key"]["Rules"]]}}}
        for c in props["NotificationConfiguration"]["QueueConfigurations"]]})
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"])
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())

    s3.put_object(Bucket=bucket, Key="raw/cat.jpg", Body=b"jpeg")
    s3.put_object(Bucket=bucket, Key="processed/thumbnails/cat.jpg", Body=b"derived")
    s3.delete_object(Bucket=bucket, Key="raw/cat.jpg")
    events = []
    for _ in range(5):
        for message in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
                "Messages", []):
            body = json.loads(message["Body"])
            # Keys arrive URL-encoded, as S3 sends them ('red flower.jpg' -> 'red+flower.jpg').
            events += [(r["eventName"], unquote_plus(r["s3"]["object"]["key"])) for r in body.get("Records", [])]
        if len(events) >= 2:
            break
    assert sorted(events) == [("ObjectCreated:Put", "raw/cat.jpg"), ("ObjectRemoved:Delete", "raw/cat.jpg")]


def test_status_then_down_keeps_the_bucket_and_says_so(aws, capsys):
    assert run(capsys, *UP)[0] == 0
    code, out, _ = run(capsys, "status")
    assert code == 0 and f"stack {aws['stack']} ({REGION}): CREATE_COMPLETE" in out
    bucket = printed_outputs(out)["BucketName"]
    client(aws, "s3").put_object(Bucket=bucket, Key="raw/a.png", Body=b"png")
    vpc = physical_ids(aws)["Vpc"]

    code, out, err = run(capsys, "down", "--yes")
    assert code == 0, err
    assert f"deleted stack {aws['stack']}" in out
    assert f"kept s3://{bucket} (1 object(s); the template retains it)" in out
    assert client(aws, "s3").head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert not client(aws, "ec2").describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Vpcs"]

    code, _, err = run(capsys, "status")
    assert code == 1 and f"no stack {aws['stack']}" in err
    code, _, err = run(capsys, "down", "--yes")
    assert code == 0 and "nothing to delete" in err


def test_down_with_delete_bucket_empties_and_deletes_it(aws, capsys):
    code, out, _ = run(capsys, *UP)
    bucket = printed_outputs(out)["BucketName"]
    s3 = client(aws, "s3")
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"raw/{i}.jpg", Body=b"x")
    code, out, err = run(capsys, "down", "--delete-bucket", "--yes")
    assert code == 0, err
    assert f"deleted s3://{bucket} (3 object(s))" in out
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_down_without_a_terminal_asks_for_yes_and_deletes_nothing(aws, capsys, monkeypatch):
    assert run(capsys, *UP)[0] == 0
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))
    code, _, err = run(capsys, "down")
    assert code == 2 and "pass --yes" in err
    assert run(capsys, "status")[0] == 0


def test_a_second_up_updates_the_stack_keeping_what_was_not_passed(aws, capsys):
    """Your address changed: `up --ssh-cidr NEW` moves the SSH rule, and only it."""
    assert run(capsys, *UP)[0] == 0
    host = physical_ids(aws)["Host"]
    code, out, err = run(capsys, "up", "--ssh-cidr", "198.51.100.9/32", "--poll-seconds", "0.05")
    assert code == 0, err
    assert f"stack {aws['stack']} ({REGION}): updated, UPDATE_COMPLETE" in out
    assert "UPDATE_COMPLETE" in err and "CREATE_" not in err  # this change's events only
    ids = physical_ids(aws)
    [group] = client(aws, "ec2").describe_security_groups(GroupIds=[ids["HostSecurityGroup"]])["SecurityGroups"]
    assert [r["CidrIp"] for p in group["IpPermissions"] for r in p["IpRanges"]] == ["198.51.100.9/32"]
    assert ids["Host"] == host  # the same host (its AMI is pinned: a newer image does not replace it)
    stack = client(aws, "cloudformation").describe_stacks(StackName=aws["stack"])["Stacks"][0]
    values = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert values["KeyName"] == "imgpipe-test" and values["GitRef"] == "main"
    image = client(aws, "ec2").describe_instances(InstanceIds=[host])["Reservations"][0]["Instances"][0]["ImageId"]
    debian = client(aws, "ssm").get_parameter(Name=DEBIAN_AMI_PARAMETER)["Parameter"]["Value"]
    assert values["PinnedImageId"] == image == debian


def test_ssh_open_to_the_world_is_refused_before_aws_is_called(aws, capsys):
    code, out, err = run(capsys, "up", "--ssh-cidr", "0.0.0.0/0", "--key-name", "imgpipe-test",
                         "--repository-url", "https://example.org/imgpipe.git", "--git-ref", "main")
    assert code == 2
    assert err.strip() == ("error: SshCidr 0.0.0.0/0 would open SSH to the whole internet; pass your own "
                           "address, e.g. 203.0.113.7/32")
    stacks = client(aws, "cloudformation").list_stacks()["StackSummaries"]
    assert aws["stack"] not in [s["StackName"] for s in stacks]


def test_a_failed_stack_is_named_with_what_to_do(aws, capsys):
    from moto.cloudformation.models import cloudformation_backends

    assert run(capsys, *UP)[0] == 0
    [stack] = [s for s in cloudformation_backends[ACCOUNT][REGION].stacks.values() if s.name == aws["stack"]]
    stack.status = "ROLLBACK_COMPLETE"
    code, _, err = run(capsys, *UP)
    assert code == 1
    assert f"stack {aws['stack']} is in ROLLBACK_COMPLETE" in err and "python -m deploy down" in err
    assert len(err.strip().splitlines()) == 1
    assert run(capsys, "status")[0] == 1
    assert run(capsys, "down", "--yes")[0] == 0


def test_no_credentials_is_one_line_and_exit_2(aws, capsys, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, out, err = run(capsys, "status")
    assert code == 2 and out == ""
    assert err.startswith("error: no AWS credentials found") and len(err.strip().splitlines()) == 1


def test_the_module_runs_as_a_program(aws):
    result = subprocess.run([sys.executable, "-m", "deploy", "status", "--stack-name", "imgpipe-none"],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 1 and "no stack imgpipe-none in us-east-1" in result.stderr
    help_text = subprocess.run([sys.executable, "-m", "deploy", "--help"], capture_output=True, text=True,
                               cwd=REPO_ROOT, timeout=60).stdout
    assert "python -m deploy up --ssh-cidr 203.0.113.7/32 --key-name my-key" in help_text


def test_a_fleet_of_two_consumer_hosts_is_created_shown_and_deleted(aws, capsys):
    """ConsumerHosts=2: the Auto Scaling group, its launch template, the CPU policy, the secret and
    the two ingress rules exist, `status` shows the fleet, and `down` removes it all."""
    code, out, err = run(capsys, *UP, "--parameter", "ConsumerHosts=2", "--parameter", "ConsumerHostsMax=3")
    assert code == 0, err
    outputs = printed_outputs(out)
    # (moto 5.2.5's CloudFormation skips AWS::SecretsManager::Secret and AWS::AutoScaling::ScalingPolicy:
    # FleetSecretArn and the CPU policy are checked on the template in test_deploy_template.py.)
    assert {"FleetGroupName", "FleetKafkaBootstrap"} <= set(outputs)
    assert outputs["FleetKafkaBootstrap"].endswith(":9094")
    assert "fleet: 2 of 2 consumer host(s) in service (min 2, max 3; group " in out
    ids = physical_ids(aws)
    autoscaling, ec2 = client(aws, "autoscaling"), client(aws, "ec2")
    [group] = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[ids["FleetGroup"]])["AutoScalingGroups"]
    assert (group["MinSize"], group["MaxSize"]) == (2, 3) and len(group["Instances"]) == 2
    # The host's group lets the fleet's group, and only it, reach 9094 and 7700; nothing from 0.0.0.0/0.
    [host_group] = ec2.describe_security_groups(GroupIds=[ids["HostSecurityGroup"]])["SecurityGroups"]
    from_fleet = sorted(p["FromPort"] for p in host_group["IpPermissions"]
                        if [g["GroupId"] for g in p.get("UserIdGroupPairs", [])] == [ids["FleetSecurityGroup"]])
    assert from_fleet == [7700, 9094]
    for permission in host_group["IpPermissions"]:
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in permission.get("IpRanges", []))
    # The fleet's instances have the fleet's role, whose only policy is the consumer's.
    iam = client(aws, "iam")
    profile = iam.get_instance_profile(InstanceProfileName=ids["FleetInstanceProfile"])["InstanceProfile"]
    [role] = profile["Roles"]
    assert iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"] == ["consumer"]
    # (The host's fleet-secret RolePolicy is not applied by moto either; the template test checks it.)

    code, out, _ = run(capsys, "status")
    assert code == 0 and "fleet: 2 of 2 consumer host(s) in service" in out

    code, out, err = run(capsys, "down", "--yes")
    assert code == 0, err
    assert not autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[ids["FleetGroup"]])["AutoScalingGroups"]


def test_without_a_fleet_nothing_of_it_is_made(aws, capsys):
    code, out, err = run(capsys, *UP)
    assert code == 0, err
    ids = physical_ids(aws)
    assert not {"FleetGroup", "FleetSecret", "HostKafkaFromFleet"} & set(ids)
    assert "FleetGroupName" not in printed_outputs(out) and "fleet:" not in out
