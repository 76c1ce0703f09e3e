"""A fused chain nests one generator per step on a task thread's stack: 300 steps failed at run
time with RecursionError after passing validate. Chains up to the planner's limit run; a longer
one is refused at validate, naming the limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from osiris_flight.oml.plan import MAX_FUSED_STEPS
from tests.cluster.conftest import osiris, read_csv, same_rows, write_events_csv

pytestmark = pytest.mark.cluster


def chain(filters: int) -> str:
    steps = [
        "  - id: extract\n    component: filesystem.csv_extractor\n    mode: read\n    config: {path: in.csv}"
    ]
    previous = "extract"
    for i in range(filters):
        steps.append(
            f"  - id: f{i}\n    component: transform.filter\n    mode: transform\n"
            f'    depends_on: [{previous}]\n    config: {{where: "event_id >= {i}"}}'
        )
        previous = f"f{i}"
    steps.append(
        "  - id: write\n    component: filesystem.csv_writer\n    mode: write\n"
        f"    depends_on: [{previous}]\n    config: {{path: out/chain.csv}}"
    )
    return 'oml_version: "0.2.0"\nname: long_chain\nsteps:\n' + "\n".join(steps) + "\n"


def test_a_chain_of_300_fused_steps_runs(workdir: Path) -> None:
    table = write_events_csv(workdir / "in.csv", 5_000)
    (workdir / "chain.yaml").write_text(chain(300))
    checked = osiris(["validate", "chain.yaml"], workdir)
    assert checked.code == 0 and "302 steps, 1 stage" in checked.stdout, checked.stdout + checked.stderr
    result = osiris(["run", "chain.yaml", "--json", "--workers", "1"], workdir)
    assert result.code == 0, result.stdout + result.stderr
    assert result.json()["status"] == "success"
    # Each filter drops one more row: the chain really ran step by step.
    want = table.filter(table["event_id"].to_numpy() >= 299)
    assert same_rows(read_csv(workdir / "out/chain.csv"), want)


def test_a_chain_longer_than_the_limit_is_refused_at_validate_naming_it(tmp_path: Path) -> None:
    (tmp_path / "chain.yaml").write_text(chain(MAX_FUSED_STEPS))  # 2 steps more than the limit
    refused = osiris(["validate", "chain.yaml"], tmp_path)
    assert refused.code == 2
    assert "Traceback" not in refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert f"step 'f{MAX_FUSED_STEPS - 1}'" in line
    assert f"fused task of more than {MAX_FUSED_STEPS} steps, the limit" in line
