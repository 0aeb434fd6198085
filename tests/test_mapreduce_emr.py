"""The emr runner against moto's EMR and S3 (the EMR control plane cannot run here).

moto records clusters and steps but never runs a step: these tests check that the step is
defined exactly right, that the uploads land in S3, and drive the step's state through the
EMR API (moto's backend, or botocore's Stubber) to check waiting, failure reasons, and the
download and merge of the part files.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from moto.emr.models import Step, emr_backends

from imgpipe.settings import Settings
from mapreduce import run_job
from mapreduce.runners import emr
from mapreduce.runners.common import SUMMARY_FILES, JobFailed, JobSpec

GOLDEN = Path(__file__).resolve().parent / "golden" / "mapreduce"
INPUT = GOLDEN / "input.csv"
REGION = "us-east-1"
BUCKET = "emr-test-bucket"
PREFIX = "emr/runs/test-run/"
ACCOUNT = "123456789012"


@pytest.fixture
def aws(monkeypatch):
    """moto's in-process AWS, with a bucket, and settings that point at it (no endpoint URL)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_EMR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield Settings(s3_endpoint_url="", s3_bucket=BUCKET, aws_region=REGION)


def running_cluster() -> str:
    client = boto3.client("emr", region_name=REGION)
    return client.run_job_flow(**emr.cluster_definition(
        release_label="emr-7.12.0", instance_type="m5.xlarge", log_uri=f"s3://{BUCKET}/logs/"))["JobFlowId"]


def moto_step(cluster_id: str) -> Step:
    steps = emr_backends[ACCOUNT][REGION].clusters[cluster_id].steps
    assert len(steps) == 1
    return steps[0]


def finish_step(cluster_id: str, parts: dict[str, str]):
    """A `sleep` for the runner that plays the cluster: the first poll sees the step running,
    then it writes the part files and marks the step completed."""
    def sleep(_seconds):
        s3 = boto3.client("s3", region_name=REGION)
        for name, text in parts.items():
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}output/{name}", Body=text.encode())
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}output/_SUCCESS", Body=b"")
        moto_step(cluster_id).state = "COMPLETED"
    return sleep


def golden_parts() -> dict[str, str]:
    """The golden summary as two reducers would write it (disjoint groups, each sorted)."""
    lines = (GOLDEN / "part-00000").read_text(encoding="utf-8").splitlines(keepends=True)
    return {"part-00000": "".join(lines[1::2]), "part-00001": "".join(lines[0::2])}


def test_the_step_is_a_streaming_step_with_the_users_arguments():
    step = emr.step_definition(input_uri="s3://b/p/input/x.csv", output_uri="s3://b/p/output/",
                               file_uris=["s3://b/p/code/mapper.py", "s3://b/p/code/reducer.py",
                                          "s3://b/p/code/streaming_common.py"],
                               reducers=2, identity=False)
    assert step == {
        "Name": "imgpipe image metadata summaries",
        "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": [
            "hadoop-streaming",
            "-D", "stream.num.map.output.key.fields=2", "-D", "stream.num.reduce.output.key.fields=2",
            "-files", "s3://b/p/code/mapper.py,s3://b/p/code/reducer.py,s3://b/p/code/streaming_common.py",
            "-cmdenv", "PYTHONPATH=.",
            "-mapper", "mapper.py", "-combiner", "reducer.py --combiner", "-reducer", "reducer.py",
            "-numReduceTasks", "2", "-input", "s3://b/p/input/x.csv", "-output", "s3://b/p/output/"]},
    }
    identity = emr.step_definition(input_uri="s3://b/in.csv", output_uri="s3://b/out/", file_uris=[],
                                   reducers=1, identity=True)
    args = identity["HadoopJarStep"]["Args"]
    assert args[args.index("-mapper") + 1] == "/bin/cat" and args[args.index("-reducer") + 1] == "/bin/cat"
    assert "-files" not in args and "-combiner" not in args and "-cmdenv" not in args


def test_a_job_on_a_running_cluster_uploads_adds_the_step_waits_and_merges(aws, tmp_path):
    cluster_id = running_cluster()
    options = emr.EmrOptions(cluster_id=cluster_id, s3_prefix=PREFIX, poll_seconds=0)
    spec = JobSpec(input=str(INPUT), output_dir=tmp_path / "out", reducers=2)
    result = emr.run_emr(spec, aws, options, sleep=finish_step(cluster_id, golden_parts()))

    s3 = boto3.client("s3", region_name=REGION)
    def body(key):
        return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body(f"{PREFIX}input/input.csv") == INPUT.read_bytes()
    for script in SUMMARY_FILES:  # mapper.py, reducer.py and the streaming_common.py they import
        assert body(f"{PREFIX}code/{script.name}") == script.read_bytes()

    step = moto_step(cluster_id)
    assert step.jar == "command-runner.jar"
    assert step.args == emr.step_definition(
        input_uri=f"s3://{BUCKET}/{PREFIX}input/input.csv", output_uri=f"s3://{BUCKET}/{PREFIX}output/",
        file_uris=[f"s3://{BUCKET}/{PREFIX}code/{script.name}" for script in SUMMARY_FILES],
        reducers=2, identity=False)["HadoopJarStep"]["Args"]
    assert step.args[step.args.index("-cmdenv") + 1] == "PYTHONPATH=."
    assert step.action_on_failure == "CONTINUE"

    assert sorted(p.name for p in result.parts) == ["part-00000", "part-00001"]
    assert (tmp_path / "out" / "summary.tsv").read_text(encoding="utf-8") == (GOLDEN / "part-00000").read_text(encoding="utf-8")
    assert (result.runner, result.rows_in, result.groups_out) == ("emr", 46, 48)
    # A cluster we were given is left running.
    assert emr_backends[ACCOUNT][REGION].clusters[cluster_id].state not in emr.CLUSTER_GONE


def test_create_cluster_makes_a_small_cluster_and_terminates_it(aws, tmp_path, monkeypatch):
    created = []
    real_client = emr.emr_client

    def client(settings):
        c = real_client(settings)
        original = c.run_job_flow

        def run_job_flow(**kwargs):
            response = original(**kwargs)
            created.append((response["JobFlowId"], kwargs))
            return response
        c.run_job_flow = run_job_flow
        return c
    monkeypatch.setattr(emr, "emr_client", client)

    def sleep(_seconds):
        cluster_id = created[0][0]
        finish_step(cluster_id, {"part-00000": "identity\tline\n"})(0)

    options = emr.EmrOptions(create_cluster=True, s3_prefix=PREFIX, poll_seconds=0)
    spec = JobSpec(input=f"s3://{BUCKET}/data/image_metadata.csv", output_dir=tmp_path / "out", identity=True)
    result = emr.run_emr(spec, aws, options, sleep=sleep)

    (cluster_id, request), = created
    cluster = emr_backends[ACCOUNT][REGION].clusters[cluster_id]
    assert request["ReleaseLabel"] == "emr-7.12.0"
    assert [(g["InstanceRole"], g["InstanceType"], g["InstanceCount"]) for g in request["Instances"]["InstanceGroups"]] == \
        [("MASTER", "m5.xlarge", 1), ("CORE", "m5.xlarge", 1)]
    assert (request["JobFlowRole"], request["ServiceRole"]) == ("EMR_EC2_DefaultRole", "EMR_DefaultRole")
    assert cluster.state == "TERMINATED"
    args = moto_step(cluster_id).args
    assert args[args.index("-input") + 1] == f"s3://{BUCKET}/data/image_metadata.csv"  # used where it is
    assert args[args.index("-mapper") + 1] == "/bin/cat"
    listed = boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}code/")
    assert listed.get("KeyCount", 0) == 0, "the identity job needs no scripts"
    assert result.rows_in is None and result.groups_out == 1


def _step(state: str, **status) -> dict:
    return {"Step": {"Id": "s-1", "Name": "x", "Status": {"State": state, **status},
                     "Config": {"Jar": "command-runner.jar", "Args": []}, "ActionOnFailure": "CONTINUE"}}


def test_waiting_reports_the_failure_details_of_a_failed_step():
    client = boto3.client("emr", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    params = {"ClusterId": "j-1", "StepId": "s-1"}
    stubber.add_response("describe_step", _step("PENDING"), params)
    stubber.add_response("describe_step", _step("RUNNING"), params)
    stubber.add_response("describe_step", _step("FAILED", FailureDetails={
        "Reason": "Streaming Command Failed!", "Message": "Job not successful!",
        "LogFile": "s3://logs/j-1/steps/s-1/stderr.gz"}), params)
    sleeps = []
    with stubber, pytest.raises(JobFailed) as failed:
        emr.wait_for_step(client, "j-1", "s-1", poll_seconds=5, sleep=sleeps.append)
    assert str(failed.value) == ("EMR step s-1 FAILED: Streaming Command Failed!: Job not successful! "
                                 "(log: s3://logs/j-1/steps/s-1/stderr.gz)")
    assert sleeps == [5, 5]
    stubber.assert_no_pending_responses()


def test_waiting_returns_a_completed_step_and_gives_up_after_the_timeout():
    client = boto3.client("emr", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    stubber.add_response("describe_step", _step("RUNNING"))
    stubber.add_response("describe_step", _step("COMPLETED"))
    for _ in range(3):
        stubber.add_response("describe_step", _step("RUNNING"))
    ticks = iter(range(0, 1000, 10))
    with stubber:
        assert emr.wait_for_step(client, "j-1", "s-1", sleep=lambda s: None)["Status"]["State"] == "COMPLETED"
        with pytest.raises(JobFailed, match="still RUNNING after 15 s.*cancel-steps --cluster-id j-1 --step-ids s-1"):
            emr.wait_for_step(client, "j-1", "s-1", timeout_seconds=15, sleep=lambda s: None,
                              clock=lambda: next(ticks))


def test_create_cluster_takes_the_deploys_roles_and_subnet_from_the_environment(aws, tmp_path, monkeypatch,
                                                                              capsys):
    """On the deploy's host pipeline.env sets EMR_SERVICE_ROLE, EMR_JOB_FLOW_ROLE and EMR_SUBNET_ID
    (the stack's outputs EmrServiceRole, EmrJobFlowRole, EmrSubnetId): a created cluster uses them
    and carries the tag AmazonEMRServicePolicy_v2 requires, besides the host role's created-by."""
    created = []
    real_client = emr.emr_client

    def client(settings):
        c = real_client(settings)
        original = c.run_job_flow

        def run_job_flow(**kwargs):
            created.append(kwargs)
            return original(**kwargs)
        c.run_job_flow = run_job_flow
        return c
    monkeypatch.setattr(emr, "emr_client", client)
    backend = emr_backends[ACCOUNT][REGION]
    original_describe = type(backend).describe_step

    def describe_step(self, cluster_id, step_id):  # the cluster runs the step at once
        finish_step(cluster_id, {"part-00000": "identity\tline\n"})(0)
        return original_describe(self, cluster_id, step_id)
    monkeypatch.setattr(type(backend), "describe_step", describe_step)
    for name, value in (("S3_ENDPOINT_URL", ""), ("S3_BUCKET", BUCKET), ("AWS_REGION", REGION),
                        ("EMR_SERVICE_ROLE", "imgpipe-EmrServiceRole-ABC"),
                        ("EMR_JOB_FLOW_ROLE", "imgpipe-EmrInstanceProfile-DEF"), ("EMR_SUBNET_ID", "subnet-0123")):
        monkeypatch.setenv(name, value)
    code = run_job.main(["--runner", "emr", "--create-cluster", "--identity", "--input",
                         f"s3://{BUCKET}/data/image_metadata.csv", "--output", str(tmp_path / "out"),
                         "--poll-seconds", "0", "--s3-prefix", PREFIX])
    assert code == 0, capsys.readouterr().err
    [request] = created
    assert (request["ServiceRole"], request["JobFlowRole"]) == ("imgpipe-EmrServiceRole-ABC",
                                                                "imgpipe-EmrInstanceProfile-DEF")
    assert request["Instances"]["Ec2SubnetId"] == "subnet-0123"
    assert {"Key": "created-by", "Value": "imgpipe mapreduce/run_job.py"} in request["Tags"]
    assert {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"} in request["Tags"]
    # Options win over the environment.
    help_text = run_job.build_parser().format_help()
    assert "EMR_SERVICE_ROLE" in help_text and "EMR_JOB_FLOW_ROLE" in help_text and "EMR_SUBNET_ID" in help_text


def test_the_deploys_host_hands_its_emr_outputs_to_run_job():
    """The template writes the three outputs' values into the host's deploy.env, setup.sh copies
    them into pipeline.env, which imgpipe-run loads."""
    from deploy.cloudformation import load_template
    from imgpipe.settings import REPO_ROOT

    template = load_template()
    user_data = template["Resources"]["Host"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    if isinstance(user_data, list):  # Fn::Sub's [template, variables] form
        user_data = user_data[0]
    outputs = template["Outputs"]
    for variable, output in (("EMR_SERVICE_ROLE", "EmrServiceRole"), ("EMR_JOB_FLOW_ROLE", "EmrJobFlowRole"),
                             ("EMR_SUBNET_ID", "EmrSubnetId")):
        resource = outputs[output]["Value"]["Ref"]
        assert f"{variable}=${{{resource}}}" in user_data
        assert f"{variable}=${variable}" in (REPO_ROOT / "deploy/host/setup.sh").read_text()


def test_cli_exits_1_with_the_reason_of_a_failed_step(aws, tmp_path, monkeypatch, capsys):
    """End to end through run_job.main: the step fails on the cluster; nothing is downloaded."""
    cluster_id = running_cluster()
    monkeypatch.setenv("S3_ENDPOINT_URL", "")
    monkeypatch.setenv("S3_BUCKET", BUCKET)
    monkeypatch.setenv("AWS_REGION", REGION)
    backend = emr_backends[ACCOUNT][REGION]
    original = type(backend).describe_step
    calls = []

    def describe_step(self, cluster_id, step_id):
        step = original(self, cluster_id, step_id)
        calls.append(step.state)
        if len(calls) >= 2:
            step.state = "FAILED"
        return step
    monkeypatch.setattr(type(backend), "describe_step", describe_step)
    monkeypatch.setattr(Step, "status", property(lambda self: {
        "State": self.state,
        **({"FailureDetails": {"Reason": "Streaming Command Failed!", "Message": "mapper.py exited with 1",
                               "LogFile": "s3://logs/stderr.gz"}} if self.state == "FAILED" else {}),
        "Timeline": {"CreationDateTime": datetime.datetime(2026, 1, 1)}}))
    code = run_job.main(["--runner", "emr", "--cluster-id", cluster_id, "--input", str(INPUT),
                         "--output", str(tmp_path / "out"), "--poll-seconds", "0", "--s3-prefix", PREFIX])
    err = capsys.readouterr().err
    assert code == 1
    assert "job failed: EMR step" in err and "FAILED: Streaming Command Failed!: mapper.py exited with 1" in err
    assert not (tmp_path / "out" / "summary.tsv").exists()


@pytest.mark.parametrize("args, message", [
    ([], "exactly one of --cluster-id ID and --create-cluster"),
    (["--cluster-id", "j-1", "--create-cluster"], "exactly one of"),
    (["--cluster-id", "j-NOSUCHCLUSTER"], "cannot use EMR cluster j-NOSUCHCLUSTER"),
])
def test_cli_usage_errors(aws, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setenv("S3_ENDPOINT_URL", "")
    monkeypatch.setenv("S3_BUCKET", BUCKET)
    code = run_job.main(["--runner", "emr", "--input", str(INPUT), "--output", str(tmp_path / "o"), *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_the_local_s3_endpoint_is_refused_for_emr(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    code = run_job.main(["--runner", "emr", "--cluster-id", "j-1", "--input", str(INPUT),
                         "--output", str(tmp_path / "o")])
    assert code == 2
    assert "S3_ENDPOINT_URL= (empty)" in capsys.readouterr().err


def test_runs_land_under_the_prefix_the_iam_policy_grants():
    first, second = emr.new_run_prefix(), emr.new_run_prefix()
    assert first.startswith("emr/runs/") and first.endswith("/") and first != second
