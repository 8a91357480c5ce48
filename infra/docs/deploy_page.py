"""The generated parts of ``docs/deploy.md``: per environment of ``samconfig.toml``, what the stack
costs a month at zero load (``twopass cost``'s fixed monthly costs, at that environment's Lambda
memory) and the GPU capacity a release at full scale needs.

    python -m infra.docs.deploy_page          # rewrite the regions
    python -m infra.docs.deploy_page --check  # exit 1 when they are out of date
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import replace

from infra.docs import markers
from twopass.config import REPO_ROOT
from twopass.local import template as tpl
from twopass.tools import cost

PAGE = REPO_ROOT / "docs" / "deploy.md"
ENVIRONMENTS = ("dev", "prod")
#: vCPUs of the single-GPU sizes of g4dn, g5 and g6 (the same in each family).
VCPUS = {"xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "16xlarge": 64}
#: Billed only in a month something emits them; a month with no traffic emits none.
ONLY_WITH_TRAFFIC = "custom metrics (EMF)"


def env_parameters(env: str) -> dict[str, str]:
    """Every template parameter as ``env`` deploys it: the defaults, then samconfig's overrides."""
    config = tomllib.loads((REPO_ROOT / "samconfig.toml").read_text())
    raw = config[env]["deploy"]["parameters"]["parameter_overrides"]
    defaults = {k: str(v.get("Default", "")) for k, v in tpl.load()["Parameters"].items()}
    return defaults | dict(pair.split("=", 1) for pair in raw.split())


def idle_monthly(params: dict[str, str]) -> cost.Monthly:
    stack = cost.Stack.load()
    # SnapStart is off where provisioned concurrency is on (the template's UseSnapStart condition).
    snapstart = params["ApiSnapStart"] == "true" and params["ApiProvisionedConcurrency"] == "0"
    fleet = cost.Fleet(instance_type=params["WorkerInstanceType"], lambda_memory_mb=int(params["ApiMemorySize"]))
    return cost.fixed_monthly(
        replace(stack, snapstart=snapstart), fleet, cost.Traffic(), cost.Prices.load(), cost.Measured.load()
    )


def idle_table() -> str:
    monthly = {env: idle_monthly(env_parameters(env)) for env in ENVIRONMENTS}
    components = list(dict.fromkeys(line.component for m in monthly.values() for line in m.lines))
    rows = [f"| component | {' | '.join(ENVIRONMENTS)} | basis ({ENVIRONMENTS[-1]}) |", "|---|" + "---:|" * 2 + "---|"]
    for component in components:
        cells, basis = [], ""
        for env in ENVIRONMENTS:
            line = next((x for x in monthly[env].lines if x.component == component), None)
            cells.append(f"${line.usd_per_month:.2f}" if line else "—")
            basis = f"{line.service}: {line.basis}" if line else basis
        rows.append(f"| {component} | {' | '.join(cells)} | {basis} |")
    totals = [f"**${m.total:.2f}**" for m in monthly.values()]
    rows.append(f"| **total, a month with traffic** | {' | '.join(totals)} | |")
    quiet = [
        f"**${m.total - sum(x.usd_per_month for x in m.lines if x.component == ONLY_WITH_TRAFFIC):.2f}**"
        for m in monthly.values()
    ]
    rows.append(
        f"| **total, a month with none** | {' | '.join(quiet)} | GPU instances and tasks: $0 (scaled to zero) |"
    )
    return "\n".join(rows) + "\n"


def capacity_table() -> str:
    rows = [
        "| env | instance types (in order) | `WorkerMaxTasks` | instances a full-scale release needs "
        "| G and VT vCPU quota needed |",
        "|---|---|---:|---:|---:|",
    ]
    service = tpl.load()["Resources"]["WorkerService"]["Properties"]
    maximum = int(service["DeploymentConfiguration"]["MaximumPercent"])
    for env in ENVIRONMENTS:
        params = env_parameters(env)
        types = [
            params[k] for k in ("WorkerInstanceType", "WorkerFallbackInstanceType1", "WorkerFallbackInstanceType2")
        ]
        types = [t for t in types if t]
        tasks = int(params["WorkerMaxTasks"])
        # One task per instance; a rolling release runs up to MaximumPercent of the desired tasks.
        release = math.floor(tasks * maximum / 100)
        vcpus = tasks * max(VCPUS[t.split(".")[1]] for t in types)
        rows.append(f"| {env} | {', '.join(types)} | {tasks} | {release} | {vcpus} |")
    return "\n".join(rows) + "\n"


def bodies() -> dict[str, str]:
    return {"deploy.idle": idle_table(), "deploy.capacity": capacity_table()}


def main(argv: list[str] | None = None) -> int:
    return markers.page_main(PAGE, bodies, "infra.docs.deploy_page", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
