"""The job as a streaming step on AWS EMR: upload the CSV and the scripts to S3, add the step,
wait for it, download the part files. Optionally create a small cluster and terminate it after.

S3 layout of one run (under s3://<S3_BUCKET>/<prefix>, by default emr/runs/<time>-<id>/):
`input/<csv>`, `code/mapper.py`, `code/reducer.py`, `code/streaming_common.py`, `output/part-*`,
and `logs/` for a cluster this runner creates.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from imgpipe import aws, cli, s3
from imgpipe.errors import UserError
from imgpipe.settings import Settings
from mapreduce.runners.common import (SUMMARY_FILES, JobFailed, JobResult, JobSpec, Stage, count_data_rows,
                                      duplicate_stages, merge_parts, prepare_output_dir, stage_streaming_args,
                                      streaming_args)

log = logging.getLogger("mapreduce.emr")

DEFAULT_RELEASE_LABEL = "emr-7.12.0"  # Hadoop 3.4.1, Python 3.9 as python3
DEFAULT_INSTANCE_TYPE = "m5.xlarge"
STEP_DONE = "COMPLETED"
STEP_FAILED = {"FAILED", "CANCELLED", "INTERRUPTED"}
CLUSTER_GONE = {"TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS"}
# The roles `aws emr create-default-roles` makes; `python -m deploy` makes scoped ones instead
# (its outputs EmrServiceRole, EmrJobFlowRole, EmrSubnetId: set on its host in pipeline.env).
DEFAULT_SERVICE_ROLE = "EMR_DefaultRole"
DEFAULT_JOB_FLOW_ROLE = "EMR_EC2_DefaultRole"
# AmazonEMRServicePolicy_v2 (the deploy's service role) acts only on resources with this tag,
# which EMR passes on to what it creates for the cluster; harmless with the default roles.
MANAGED_POLICY_TAG = {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"}


@dataclass
class EmrOptions:
    cluster_id: str | None = None
    create_cluster: bool = False
    release_label: str = DEFAULT_RELEASE_LABEL
    instance_type: str = DEFAULT_INSTANCE_TYPE
    service_role: str = DEFAULT_SERVICE_ROLE
    job_flow_role: str = DEFAULT_JOB_FLOW_ROLE  # an instance profile's name
    subnet_id: str | None = None  # none: EMR's default (a default VPC's subnet)
    s3_prefix: str | None = None
    poll_seconds: float = 15.0
    timeout_seconds: float = 3 * 3600.0


def new_run_prefix() -> str:
    """Under emr/, the prefix the IAM policy in the top README grants this runner."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"emr/runs/{stamp}-{secrets.token_hex(3)}/"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:] or uri[5:].startswith("/"):
        raise UserError(f"{uri!r} is not an s3://bucket/key URI")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def step_definition(*, input_uri: str, output_uri: str, file_uris: list[str], reducers: int,
                    identity: bool) -> dict:
    """The streaming step, as `aws emr add-steps` takes it: command-runner.jar runs
    `hadoop-streaming` with the arguments a user would type on the master node. `file_uris`:
    where SUMMARY_FILES were uploaded, in that order."""
    args = streaming_args(input_uri=input_uri, output_uri=output_uri, reducers=reducers,
                          identity=identity, files=file_uris)
    return {
        "Name": "imgpipe identity check" if identity else "imgpipe image metadata summaries",
        # A failed job must not take down a cluster the user handed us.
        "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["hadoop-streaming", *args]},
    }


def stage_step_definition(stage: Stage, *, number: int, of: int, input_uri: str, output_uri: str,
                          file_uris: list[str], reducers: int) -> dict:
    """One stage of a chained job as a streaming step (see step_definition)."""
    args = stage_streaming_args(stage, input_uri=input_uri, output_uri=output_uri, reducers=reducers,
                                files=file_uris)
    return {
        "Name": f"imgpipe duplicates, stage {number} of {of}: {stage.name}",
        "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["hadoop-streaming", *args]},
    }


def cluster_definition(*, release_label: str, instance_type: str, log_uri: str,
                       service_role: str = DEFAULT_SERVICE_ROLE, job_flow_role: str = DEFAULT_JOB_FLOW_ROLE,
                       subnet_id: str | None = None) -> dict:
    """run_job_flow arguments of the smallest useful cluster: 1 master + 1 core node."""
    definition = {
        "Name": "imgpipe-mapreduce",
        "ReleaseLabel": release_label,
        "Applications": [{"Name": "Hadoop"}],
        "LogUri": log_uri,
        "Instances": {
            "InstanceGroups": [
                {"Name": "master", "InstanceRole": "MASTER", "InstanceType": instance_type, "InstanceCount": 1},
                {"Name": "core", "InstanceRole": "CORE", "InstanceType": instance_type, "InstanceCount": 1},
            ],
            # Kept alive until we terminate it: a failed step must not lose its logs first.
            "KeepJobFlowAliveWhenNoSteps": True,
            "TerminationProtected": False,
        },
        "JobFlowRole": job_flow_role,
        "ServiceRole": service_role,
        "VisibleToAllUsers": True,
        # created-by: the deploy's host role may create and terminate only clusters tagged so.
        "Tags": [{"Key": "created-by", "Value": "imgpipe mapreduce/run_job.py"}, dict(MANAGED_POLICY_TAG)],
    }
    if subnet_id:
        definition["Instances"]["Ec2SubnetId"] = subnet_id
    return definition


def failure_reason(step: dict) -> str:
    status = step.get("Status", {})
    details = status.get("FailureDetails") or {}
    parts = [details.get("Reason"), details.get("Message")]
    reason = ": ".join(p for p in parts if p) or (status.get("StateChangeReason") or {}).get("Message") \
        or "EMR gave no reason"
    if details.get("LogFile"):
        reason += f" (log: {details['LogFile']})"
    return reason


def wait_for_step(emr, cluster_id: str, step_id: str, poll_seconds: float = 15.0,
                  timeout_seconds: float = 3 * 3600.0, sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> dict:
    """Poll the step until it ends; returns it when COMPLETED, raises JobFailed otherwise."""
    started = clock()
    state = None
    with cli.progress(None, f"EMR step {step_id}", unit="poll") as bar:
        while True:
            with aws.errors("emr", "describing step", step_id):
                step = emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
            new_state = step["Status"]["State"]
            if new_state != state:
                state = new_state
                log.info("step %s on %s: %s after %.0f s", step_id, cluster_id, state, clock() - started)
                bar.set_postfix_str(state)
            if state == STEP_DONE:
                return step
            if state in STEP_FAILED:
                reason = failure_reason(step)
                if state == "CANCELLED" and "FailureDetails" not in step["Status"]:
                    reason = f"{reason}; cluster: {cluster_reason(emr, cluster_id)}"
                raise JobFailed(f"EMR step {step_id} {state}: {reason}")
            if clock() - started > timeout_seconds:
                raise JobFailed(f"EMR step {step_id} still {state} after {timeout_seconds:.0f} s; it keeps "
                                f"running: aws emr cancel-steps --cluster-id {cluster_id} --step-ids {step_id}")
            bar.update(1)
            sleep(poll_seconds)


def cluster_reason(emr, cluster_id: str) -> str:
    with aws.errors("emr", "describing cluster", cluster_id):
        status = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]
    return f"{status['State']} {(status.get('StateChangeReason') or {}).get('Message', '')}".strip()


def check_cluster(emr, cluster_id: str) -> None:
    try:
        with aws.errors("emr", "describing cluster", cluster_id):
            state = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
    except aws.AwsError as exc:
        if exc.transient:
            raise
        raise UserError(f"cannot use EMR cluster {cluster_id}: {exc.message or exc.code}") from None
    if state in CLUSTER_GONE:
        raise UserError(f"EMR cluster {cluster_id} is {state}; start one or pass --create-cluster")


def upload_job_files(s3_client, bucket: str, prefix: str, source: str, identity: bool,
                     scripts: tuple[Path, ...] = SUMMARY_FILES) -> tuple[str, ...]:
    """Put the CSV (unless it is on S3 already) and the scripts under the run prefix; returns
    the input's URI and each script's."""
    uploads = []
    if source.startswith("s3://"):
        parse_s3_uri(source)
        input_uri = source
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"--input {source} is not a file")
        input_key = f"{prefix}input/{path.name}"
        uploads.append((path, input_key))
        input_uri = f"s3://{bucket}/{input_key}"
    script_keys = [f"{prefix}code/{path.name}" for path in scripts]
    if not identity:
        uploads += list(zip(scripts, script_keys))
    for path, key in uploads:
        s3.upload_file(s3_client, path, bucket, key)
    return (input_uri, *(f"s3://{bucket}/{key}" for key in script_keys))


def download_parts(s3_client, bucket: str, prefix: str, output_dir: Path) -> list[Path]:
    """Copy every part-* object under `prefix` into output_dir (created)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for item in s3.list_objects(s3_client, bucket, prefix):
        name = item["Key"][len(prefix):]
        if name.startswith("part-") and "/" not in name:
            names.append(name)
        elif name == "_SUCCESS":
            (output_dir / "_SUCCESS").touch()
    paths = []
    for name in sorted(names):
        s3.download_file(s3_client, bucket, prefix + name, output_dir / name)
        paths.append(output_dir / name)
    return paths


def _run_step(emr, cluster_id: str, step: dict, options: EmrOptions, created: bool,
              sleep: Callable[[float], None]) -> None:
    """Add one step to the cluster and wait until it completes (JobFailed otherwise)."""
    with aws.errors("emr", "adding a step to", cluster_id):
        step_id = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])["StepIds"][0]
    log.info("added step %s to %s", step_id, cluster_id)
    try:
        wait_for_step(emr, cluster_id, step_id, options.poll_seconds, options.timeout_seconds, sleep=sleep)
    except KeyboardInterrupt:
        if not created:
            log.warning("the step keeps running; cancel it with: aws emr cancel-steps "
                        "--cluster-id %s --step-ids %s", cluster_id, step_id)
        raise


def emr_client(settings: Settings):
    """An EMR client for AWS_REGION; AWS_ENDPOINT_URL_EMR (read by botocore) points it elsewhere."""
    return aws.client(settings, "emr")


def run_emr(spec: JobSpec, settings: Settings, options: EmrOptions, emr=None, s3_client=None,
            sleep: Callable[[float], None] = time.sleep) -> JobResult:
    if settings.s3_endpoint_url:
        raise UserError(f"--runner emr reads and writes AWS S3, but S3_ENDPOINT_URL is {settings.s3_endpoint_url} "
                        "(a local endpoint EMR cannot reach); run with S3_ENDPOINT_URL= (empty)")
    if bool(options.cluster_id) == bool(options.create_cluster):
        raise UserError("--runner emr needs exactly one of --cluster-id ID and --create-cluster")
    prepare_output_dir(spec.output_dir, spec.overwrite)
    emr = emr or emr_client(settings)
    s3_client = s3_client or s3.client(settings)
    bucket = settings.s3_bucket
    prefix = options.s3_prefix or new_run_prefix()
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    output_prefix = f"{prefix}output/"
    cluster_id = options.cluster_id
    created = False
    started = time.monotonic()
    try:
        if cluster_id:
            check_cluster(emr, cluster_id)
        chain = spec.job == "duplicates" and not spec.identity
        stages = duplicate_stages(spec) if chain else []
        # Each file once, though stages share streaming_common.py.
        scripts = tuple(dict.fromkeys(path for stage in stages for path in stage.files)) if chain else SUMMARY_FILES
        input_uri, *script_uris = upload_job_files(s3_client, bucket, prefix, spec.input, spec.identity, scripts)
        log.info("uploaded the job to s3://%s/%s", bucket, prefix)
        if options.create_cluster:
            definition = cluster_definition(release_label=options.release_label, instance_type=options.instance_type,
                                            log_uri=f"s3://{bucket}/{prefix}logs/", service_role=options.service_role,
                                            job_flow_role=options.job_flow_role, subnet_id=options.subnet_id)
            with aws.errors("emr", "creating a cluster"):
                cluster_id = emr.run_job_flow(**definition)["JobFlowId"]
            created = True
            log.info("created EMR cluster %s (%s, 2 x %s, roles %s and %s); it is terminated when the job ends",
                     cluster_id, options.release_label, options.instance_type, options.service_role,
                     options.job_flow_role)
        if chain:
            # One step per stage, each added when the one before completed: a failed stage
            # stops the chain, and the next never reads a half-written folder.
            uri_of = dict(zip(scripts, script_uris))
            stage_input = input_uri
            for number, stage in enumerate(stages, 1):
                stage_output = (f"s3://{bucket}/{output_prefix}" if number == len(stages)
                                else f"s3://{bucket}/{prefix}stage-{stage.name}/")
                step = stage_step_definition(stage, number=number, of=len(stages), input_uri=stage_input,
                                             output_uri=stage_output, file_uris=[uri_of[p] for p in stage.files],
                                             reducers=stage.reducers or spec.reducers)
                _run_step(emr, cluster_id, step, options, created, sleep)
                stage_input = stage_output
        else:
            step = step_definition(input_uri=input_uri, output_uri=f"s3://{bucket}/{output_prefix}",
                                   file_uris=script_uris, reducers=spec.reducers, identity=spec.identity)
            _run_step(emr, cluster_id, step, options, created, sleep)
        parts = download_parts(s3_client, bucket, output_prefix, spec.output_dir)
    except aws.AwsError as exc:
        if exc.code == "NoCredentialsError":
            raise UserError(exc.message) from None
        raise
    except s3.S3Error as exc:
        if exc.code == "NoCredentialsError":
            raise UserError("no AWS credentials found (AWS_PROFILE, AWS_ACCESS_KEY_ID, or an instance role)") from None
        raise
    finally:
        if created:
            try:
                with aws.errors("emr", "terminating cluster", cluster_id):
                    emr.terminate_job_flows(JobFlowIds=[cluster_id])
                log.info("terminating EMR cluster %s", cluster_id)
            except aws.AwsError as exc:
                log.error("could not terminate EMR cluster %s, do it by hand: %s", cluster_id, exc)
    if not parts:
        raise JobFailed(f"the step completed but wrote no part files under s3://{bucket}/{output_prefix}")
    merged, groups = merge_parts(spec.output_dir, spec.merged_name)
    local_input = None if spec.input.startswith("s3://") else Path(spec.input)
    return JobResult(runner="emr", output_dir=spec.output_dir, parts=parts, merged=merged, groups_out=groups,
                     seconds=time.monotonic() - started,
                     rows_in=count_data_rows(local_input) if local_input else None)
