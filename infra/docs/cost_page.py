"""The generated parts of ``docs/cost-and-capacity.md``: every price the cost model uses (unit and
source page), and what ``twopass cost`` and ``twopass plan`` print for the example loads.

    python -m infra.docs.cost_page          # rewrite the regions
    python -m infra.docs.cost_page --check  # exit 1 when they are out of date
"""

from __future__ import annotations

import contextlib
import io

from infra.docs import markers
from twopass.cli import main as twopass
from twopass.config import REPO_ROOT
from twopass.tools.cost import Prices

PAGE = REPO_ROOT / "docs" / "cost-and-capacity.md"
#: The example commands, run as a user would (their stdout is the region's body).
COST_EXAMPLE = ["--images-per-second", "400", "--rate", "50"]
PLAN_EXAMPLES = (
    ["--rate", "20", "--images-per-second", "400"],
    ["--rate", "50", "--images-per-second", "400"],
    ["--rate", "400", "--images-per-second", "400"],
)


def price_table() -> str:
    prices = Prices.load()
    rows = ["| price | value | unit | source |", "|---|---|---|---|"]
    for name, item in prices.items.items():
        rows.append(f"| `{name}` | {item['price']:g} | {item['unit']} | {item['source']} |")
    for kind, table in (("EC2 on-demand", prices.ec2), ("SageMaker inference", prices.sagemaker)):
        listed = ", ".join(f"{k} ${v:g}" for k, v in table.items())
        rows.append(
            f"| {kind} instance-hours | | {listed} | {prices.sources['ec2' if kind[0] == 'E' else 'sagemaker']} |"
        )
    return "\n".join(rows) + "\n"


def _run(argv: list[str]) -> str:
    """What ``twopass ARGV`` prints on stdout."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        twopass(argv)
    return out.getvalue()


def bodies() -> dict[str, str]:
    cost = _run(["cost", *COST_EXAMPLE])
    plans = []
    for argv in PLAN_EXAMPLES:
        plans += [f"$ twopass plan {' '.join(argv)}", _run(["plan", *argv]).rstrip("\n"), ""]
    return {
        "cost.prices": price_table(),
        "cost.example": f"`twopass cost {' '.join(COST_EXAMPLE)}`:\n\n{cost}",
        "cost.plans": "```console\n" + "\n".join(plans).rstrip("\n") + "\n```\n",
    }


def main(argv: list[str] | None = None) -> int:
    return markers.page_main(PAGE, bodies, "infra.docs.cost_page", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
