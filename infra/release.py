"""Release path of a deployed stack: ``make deploy``, ``make rollback`` and ``make destroy``.

    python -m infra.release deploy   --env dev [--alarm-email you@example.com|none] [--yes] [--dry-run]
    python -m infra.release rollback --env prod --tag 3f2a9c1d0e4b [--yes]
    python -m infra.release destroy  --env dev [--yes]

deploy: the image is built and pushed under the git sha (immutable tags: one per commit), ``sam
build``/``sam deploy`` run with ``ImageTag=<sha>``, the service is waited on until stable, and the
worker's preflight runs on a GPU: as the container health check of the new tasks, or as a one-off
task when the service is at zero (a deployment of zero tasks tests nothing). The tag lives in the
stack's own ``ImageTag`` parameter: samconfig.toml does not state it, so a later plain ``sam deploy``
keeps it (SAM passes UsePreviousValue for every parameter it is not given).

rollback: the stack's previous template with only ``ImageTag`` changed, to a tag already in ECR.

destroy: the worker service and the GPU group go to zero (and the script waits), the payload bucket is
emptied, the stack deleted; it then says what it kept and what that keeps costing.

AWS calls go through boto3 (``AWS_ENDPOINT_URL`` points them at the local emulator); docker and sam
run through :class:`Tools`, which ``--dry-run`` turns into printing the commands.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from twopass.exceptions import TwopassError
from twopass.tools.cost import Prices

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Parameters the release path owns (samconfig.toml must not state them).
IMAGE_TAG = "ImageTag"
PREFLIGHT = ["python", "-m", "twopass.worker", "--preflight"]
#: The Dockerfile target the ECS GPU task runs (docs/worker-image.md).
IMAGE_TARGET = "gpu-slim"
GB = 1024**3
#: Seconds between two looks at a service, task or group (``--poll-seconds``).
POLL_SECONDS = 10.0


class ReleaseError(TwopassError):
    """A release, rollback or delete step failed; the message says which and what to do."""


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Env:
    name: str
    stack: str
    region: str
    overrides: dict[str, str]


def load_env(name: str, path: Path = REPO_ROOT / "samconfig.toml") -> Env:
    config = tomllib.loads(path.read_text())
    section = config.get(name)
    if not section or "deploy" not in section:
        envs = sorted(k for k, v in config.items() if isinstance(v, dict) and "deploy" in v)
        raise ReleaseError(f"no environment {name!r} in {path.name} (one of: {', '.join(envs)})")
    glob = section["global"]["parameters"]
    raw = section["deploy"]["parameters"].get("parameter_overrides", "")
    pairs = raw if isinstance(raw, list) else shlex.split(raw)
    return Env(name, glob["stack_name"], glob["region"], dict(p.split("=", 1) for p in pairs))


# ---------------------------------------------------------------- the docker / sam / git seam


@dataclass
class Tools:
    """Runs the local commands; ``dry_run`` prints them instead (and git still answers)."""

    dry_run: bool = False
    sam: str = "sam"
    docker: str = "docker"
    say: Callable[[str], None] = print
    ran: list[list[str]] = field(default_factory=list)

    def run(self, argv: Sequence[str], stdin: bytes | None = None) -> None:
        self.ran.append(list(argv))
        self.say(f"$ {shlex.join(argv)}")
        if self.dry_run:
            return
        done = subprocess.run(list(argv), input=stdin, cwd=REPO_ROOT, check=False)
        if done.returncode != 0:
            raise ReleaseError(f"{argv[0]} {argv[1]} exited with {done.returncode}")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()


def image_tag(tools: Tools, allow_dirty: bool) -> str:
    """The git sha; a dirty tree gets a timestamp too, since ECR tags are immutable."""
    sha = tools.git("rev-parse", "--short=12", "HEAD")
    if not tools.git("status", "--porcelain", "--untracked-files=no"):
        return sha
    if not allow_dirty:
        raise ReleaseError("the working tree has uncommitted changes: commit them, or pass --allow-dirty")
    return f"{sha}-dirty-{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S}"


# ---------------------------------------------------------------- AWS


@dataclass
class Aws:
    region: str
    clients: dict[str, Any] = field(default_factory=dict)

    def __call__(self, service: str) -> Any:
        if service not in self.clients:
            self.clients[service] = boto3.client(service, region_name=self.region)
        return self.clients[service]


def stack_state(aws: Aws, stack: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = aws("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    return found


def outputs(state: dict[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in state.get("Outputs", [])}


def parameters(state: dict[str, Any]) -> dict[str, str]:
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in state.get("Parameters", [])}


def physical_id(aws: Aws, stack: str, logical_id: str) -> str | None:
    try:
        resource = aws("cloudformation").describe_stack_resource(StackName=stack, LogicalResourceId=logical_id)
    except ClientError:
        return None
    value: str = resource["StackResourceDetail"]["PhysicalResourceId"]
    return value


def tag_exists(aws: Aws, repository_uri: str, tag: str) -> bool:
    name = repository_uri.split("/", 1)[1]
    try:
        aws("ecr").describe_images(repositoryName=name, imageIds=[{"imageTag": tag}])
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("ImageNotFoundException", "RepositoryNotFoundException"):
            return False
        raise
    return True


def owns_api_gateway_logging(aws: Aws, stack: str) -> bool:
    """Whether this stack should set the account's API Gateway logging role: nobody has, or it did."""
    role = aws("apigateway").get_account().get("cloudwatchRoleArn", "")
    return not role or role.split("/")[-1].startswith(f"{stack}-")


# ---------------------------------------------------------------- deploy


def push_image(aws: Aws, tools: Tools, repository_uri: str, tag: str) -> None:
    if tag_exists(aws, repository_uri, tag):
        tools.say(f"image {repository_uri}:{tag} is already in ECR: not rebuilt (tags are immutable)")
        return
    auth = aws("ecr").get_authorization_token()["authorizationData"][0]
    password = base64.b64decode(auth["authorizationToken"]).decode().split(":", 1)[1]
    registry = repository_uri.split("/", 1)[0]
    tools.run([tools.docker, "login", "--username", "AWS", "--password-stdin", registry], stdin=password.encode())
    build = [tools.docker, "buildx", "build", "--platform", "linux/amd64", "-f", "infra/worker/Dockerfile"]
    tools.run([*build, "--target", IMAGE_TARGET, "-t", f"{repository_uri}:{tag}", "--push", "."])


def sam_deploy(tools: Tools, env: Env, overrides: dict[str, str], yes: bool) -> None:
    # --parameter-overrides on the command line replaces samconfig's list: pass the env's own too.
    merged = env.overrides | overrides
    tools.run([tools.sam, "build", "--config-env", env.name])
    argv = [tools.sam, "deploy", "--config-env", env.name, "--parameter-overrides"]
    argv += [f"{k}={v}" for k, v in merged.items()]
    tools.run(argv + (["--no-confirm-changeset"] if yes else []))


def wait_stable(aws: Aws, cluster: str, service: str, tools: Tools, timeout: float) -> int:
    """Wait for the service's deployment to finish; the tasks it runs (0 when scaled to zero)."""
    tools.say(f"waiting for service {service} to be stable (at most {timeout:.0f} s)")
    deadline = time.monotonic() + timeout
    while True:
        (svc,) = aws("ecs").describe_services(cluster=cluster, services=[service])["services"]
        deployments = svc.get("deployments", [])
        rolled_back = [d for d in deployments if d.get("rolloutState") == "FAILED"]
        if rolled_back:
            raise ReleaseError(
                f"the deployment failed and ECS rolled it back: {rolled_back[0].get('rolloutStateReason')}"
            )
        if len(deployments) <= 1 and svc.get("runningCount", 0) == svc.get("desiredCount", 0):
            running: int = svc.get("runningCount", 0)
            tools.say(f"service stable: {running} task(s) running")
            return running
        if time.monotonic() > deadline:
            raise ReleaseError(f"service {service} not stable after {timeout:.0f} s: see its events in the ECS console")
        time.sleep(POLL_SECONDS)


def preflight(aws: Aws, cluster: str, service: str, tools: Tools, timeout: float) -> None:
    """One task of the service's task definition running only the preflight, on a GPU instance."""
    (svc,) = aws("ecs").describe_services(cluster=cluster, services=[service])["services"]
    tools.say(f"preflight: one task of {svc['taskDefinition'].split('/')[-1]} runs {shlex.join(PREFLIGHT)}")
    started = aws("ecs").run_task(
        cluster=cluster,
        taskDefinition=svc["taskDefinition"],
        count=1,
        capacityProviderStrategy=svc.get("capacityProviderStrategy") or [],
        overrides={"containerOverrides": [{"name": "worker", "command": PREFLIGHT}]},
        startedBy="twopass-release",
    )
    if not started.get("tasks"):
        reasons = "; ".join(f.get("reason", "?") for f in started.get("failures", [])) or "no task started"
        raise ReleaseError(f"preflight could not start: {reasons}")
    arn = started["tasks"][0]["taskArn"]
    deadline = time.monotonic() + timeout
    while True:
        (task,) = aws("ecs").describe_tasks(cluster=cluster, tasks=[arn])["tasks"]
        if task.get("lastStatus") == "STOPPED":
            break
        if time.monotonic() > deadline:
            aws("ecs").stop_task(cluster=cluster, task=arn, reason="preflight timed out")
            raise ReleaseError(f"preflight did not finish in {timeout:.0f} s (task {arn} stopped)")
        time.sleep(POLL_SECONDS)
    codes = [c.get("exitCode") for c in task.get("containers", []) if c.get("name") == "worker"]
    if codes != [0]:
        raise ReleaseError(
            f"preflight failed (exit {codes}, {task.get('stoppedReason', '')}): see the worker log group"
        )
    tools.say("preflight passed: the model loads as configured on the GPU")


def deploy(args: argparse.Namespace, env: Env, aws: Aws, tools: Tools) -> None:
    tag = args.tag or image_tag(tools, args.allow_dirty)
    state = stack_state(aws, env.stack)
    if state is not None and state["StackStatus"] == "ROLLBACK_COMPLETE":
        raise ReleaseError(
            f"{env.stack} failed to create (ROLLBACK_COMPLETE): read its events, then "
            f"make destroy ENV={env.name} and deploy again"
        )
    overrides = {IMAGE_TAG: tag}
    if state is None and args.alarm_email is None:
        raise ReleaseError(
            f"{env.stack} is a new stack: alarms need somewhere to go. Pass ALARM_EMAIL=you@example.com "
            "(confirm the e-mail AWS sends), or ALARM_EMAIL=none to deploy without"
        )
    if args.alarm_email is not None:
        overrides["AlarmEmail"] = "" if args.alarm_email == "none" else args.alarm_email
    owner = owns_api_gateway_logging(aws, env.stack)
    overrides["ConfigureApiGatewayAccount"] = "true" if owner else "false"
    tools.say(
        f"{'creating' if state is None else 'updating'} {env.stack} in {env.region} with image tag {tag} "
        f"(API Gateway logging role: {'this stack' if owner else 'kept, another stack owns it'})"
    )
    # The image goes first where the repository exists, so tasks never start on a missing tag; a new
    # stack starts at zero tasks, and its repository exists only once it is deployed.
    repository = outputs(state).get("EcrRepositoryUri") if state else None
    if repository:
        push_image(aws, tools, repository, tag)
    sam_deploy(tools, env, overrides, args.yes)
    if tools.dry_run:
        tools.say("dry run: no deploy happened, nothing to wait for")
        return
    deployed = stack_state(aws, env.stack)
    if deployed is None or parameters(deployed).get(IMAGE_TAG) != tag:
        raise ReleaseError(f"the stack does not run image tag {tag!r} after sam deploy: see its events")
    out = outputs(deployed)
    if not repository:
        push_image(aws, tools, out["EcrRepositoryUri"], tag)
    running = wait_stable(aws, out["ClusterName"], out["ServiceName"], tools, args.timeout)
    if running:
        tools.say(f"preflight passed as the health check of the {running} new task(s)")
    elif args.skip_preflight:
        tools.say("preflight skipped (--skip-preflight): the next scale-out is the first run of this image")
    else:
        preflight(aws, out["ClusterName"], out["ServiceName"], tools, args.timeout)
    tools.say(f"released {tag} to {env.stack}; roll back with: make rollback ENV={env.name} TAG=<previous tag>")


# ---------------------------------------------------------------- rollback


def rollback(args: argparse.Namespace, env: Env, aws: Aws, tools: Tools) -> None:
    state = stack_state(aws, env.stack)
    if state is None:
        raise ReleaseError(f"no stack {env.stack} in {env.region}")
    current = parameters(state)
    if not tag_exists(aws, outputs(state)["EcrRepositoryUri"], args.tag):
        raise ReleaseError(f"tag {args.tag!r} is not in the stack's ECR repository: nothing to roll back to")
    tools.say(f"rolling {env.stack} back from image {current.get(IMAGE_TAG)} to {args.tag} (template unchanged)")
    if tools.dry_run:
        return
    cfn = aws("cloudformation")
    cfn.update_stack(
        StackName=env.stack,
        UsePreviousTemplate=True,
        Parameters=[
            {"ParameterKey": k, "ParameterValue": args.tag}
            if k == IMAGE_TAG
            else {"ParameterKey": k, "UsePreviousValue": True}
            for k in current
        ],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    cfn.get_waiter("stack_update_complete").wait(
        StackName=env.stack, WaiterConfig={"Delay": 5, "MaxAttempts": max(1, int(args.timeout // 5))}
    )
    out = outputs(stack_state(aws, env.stack) or {})
    wait_stable(aws, out["ClusterName"], out["ServiceName"], tools, args.timeout)
    tools.say(f"rolled back: {env.stack} runs {args.tag}")


# ---------------------------------------------------------------- destroy


def scale_to_zero(aws: Aws, stack: str, out: dict[str, str], tools: Tools, timeout: float) -> None:
    cluster, service = out["ClusterName"], out["ServiceName"]
    # Hold Application Auto Scaling at zero, or the scale-from-zero alarm starts a task again.
    aws("application-autoscaling").register_scalable_target(
        ServiceNamespace="ecs",
        ResourceId=f"service/{cluster}/{service}",
        ScalableDimension="ecs:service:DesiredCount",
        MinCapacity=0,
        MaxCapacity=0,
    )
    aws("ecs").update_service(cluster=cluster, service=service, desiredCount=0)
    wait_stable(aws, cluster, service, tools, timeout)
    group = physical_id(aws, stack, "WorkerAutoScalingGroup")
    if group is None:
        return
    autoscaling = aws("autoscaling")
    autoscaling.update_auto_scaling_group(AutoScalingGroupName=group, MinSize=0, MaxSize=0, DesiredCapacity=0)
    deadline = time.monotonic() + timeout
    while True:
        (asg,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
        instances = [i["InstanceId"] for i in asg.get("Instances", [])]
        if not instances:
            tools.say(f"GPU group {group}: no instance left")
            return
        # Managed termination protection keeps them otherwise; their tasks are gone already.
        autoscaling.set_instance_protection(
            AutoScalingGroupName=group, InstanceIds=instances, ProtectedFromScaleIn=False
        )
        if time.monotonic() > deadline:
            raise ReleaseError(f"GPU group {group} still has {len(instances)} instance(s) after {timeout:.0f} s")
        tools.say(f"GPU group {group}: waiting for {len(instances)} instance(s) to terminate")
        time.sleep(POLL_SECONDS)


def empty_bucket(aws: Aws, bucket: str, tools: Tools) -> int:
    s3 = aws("s3")
    removed = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        keys = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", [])]
        keys += [{"Key": m["Key"], "VersionId": m["VersionId"]} for m in page.get("DeleteMarkers", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            removed += len(keys)
    tools.say(f"payload bucket {bucket}: {removed} object(s) deleted")
    return removed


def kept(aws: Aws, out: dict[str, str], prices: Prices) -> list[str]:
    """What the stack leaves behind on purpose, with its monthly cost at list prices."""
    lines = []
    table = out.get("TableName")
    if table:
        size = aws("dynamodb").describe_table(TableName=table)["Table"].get("TableSizeBytes", 0) / GB
        monthly = size * (prices.price("dynamodb_storage_per_gb_month") + prices.price("dynamodb_pitr_per_gb_month"))
        lines.append(
            f"table {table} (DeletionPolicy Retain, point-in-time recovery on): {size:.3f} GB, "
            f"${monthly:.2f}/month; delete it with: aws dynamodb delete-table --table-name {table}"
        )
    uri = out.get("EcrRepositoryUri")
    if uri:
        name = uri.split("/", 1)[1]
        try:
            images = aws("ecr").describe_images(repositoryName=name).get("imageDetails", [])
        except ClientError:
            images = []
        size = sum(i.get("imageSizeInBytes", 0) for i in images) / GB
        lines.append(
            f"ECR repository {name} (DeletionPolicy Retain): {len(images)} image(s), {size:.2f} GB, "
            f"${size * prices.price('ecr_storage_per_gb_month'):.2f}/month; delete it with: "
            f"aws ecr delete-repository --repository-name {name} --force"
        )
    return lines


def destroy(args: argparse.Namespace, env: Env, aws: Aws, tools: Tools) -> None:
    state = stack_state(aws, env.stack)
    if state is None:
        tools.say(f"no stack {env.stack} in {env.region}: nothing to delete")
        return
    if not args.yes and input(f"type {env.stack} to delete it: ").strip() != env.stack:
        raise ReleaseError("not confirmed: nothing deleted")
    out = outputs(state)
    if tools.dry_run:
        tools.say(f"dry run: would scale {env.stack} to zero, empty {out.get('PayloadBucketName')}, delete the stack")
        return
    if "ClusterName" in out:  # a stack that failed to create has no outputs, and nothing running
        scale_to_zero(aws, env.stack, out, tools, args.timeout)
    if out.get("PayloadBucketName"):
        empty_bucket(aws, out["PayloadBucketName"], tools)
    cfn = aws("cloudformation")
    tools.say(f"deleting stack {env.stack}")
    cfn.delete_stack(StackName=env.stack)
    cfn.get_waiter("stack_delete_complete").wait(
        StackName=env.stack, WaiterConfig={"Delay": 5, "MaxAttempts": max(1, int(args.timeout // 5))}
    )
    tools.say(f"deleted {env.stack}. Kept on purpose:")
    for line in kept(aws, out, Prices.load()):
        tools.say(f"  - {line}")


# ---------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m infra.release", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    for name, text in (
        ("deploy", "build and push the image under the git sha, deploy it, wait, run the preflight"),
        ("rollback", "put an image already in ECR back (the template stays as deployed)"),
        ("destroy", "scale to zero, empty the payload bucket, delete the stack, say what is kept"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--env", required=True, help="environment in samconfig.toml (dev, prod)")
        cmd.add_argument(
            "--yes", action="store_true", help="no questions (prod's change set is shown and asked about otherwise)"
        )
        cmd.add_argument(
            "--dry-run", action="store_true", help="print the docker and sam commands instead of running them"
        )
        cmd.add_argument("--timeout", type=float, default=1800, help="seconds to wait for each step (default 1800)")
        cmd.add_argument(
            "--sam", default=os.environ.get("SAM_CLI", "sam"), help="the SAM CLI (default $SAM_CLI or sam)"
        )
        cmd.add_argument("--poll-seconds", type=float, default=POLL_SECONDS, help=argparse.SUPPRESS)
        cmd.add_argument(
            "--docker", default=os.environ.get("DOCKER", "docker"), help="docker (default $DOCKER or docker)"
        )
        if name == "deploy":
            cmd.add_argument("--tag", help="image tag (default: the git sha)")
            cmd.add_argument(
                "--allow-dirty", action="store_true", help="release uncommitted changes (tag <sha>-dirty-<time>)"
            )
            cmd.add_argument(
                "--alarm-email", help="alarm e-mail (required on a stack's first deploy; none = no e-mail)"
            )
            cmd.add_argument(
                "--skip-preflight", action="store_true", help="at zero tasks, do not start a GPU to check the image"
            )
        if name == "rollback":
            cmd.add_argument("--tag", required=True, help="an image tag already in the stack's ECR repository")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    global POLL_SECONDS  # one knob for every wait, set once per run
    args = parser().parse_args(argv)
    POLL_SECONDS = args.poll_seconds
    tools = Tools(dry_run=args.dry_run, sam=args.sam, docker=args.docker)
    try:
        env = load_env(args.env)
        aws = Aws(env.region)
        {"deploy": deploy, "rollback": rollback, "destroy": destroy}[args.command](args, env, aws, tools)
    except ReleaseError as exc:
        print(f"release: error: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"release: error: AWS refused {exc.operation_name}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
