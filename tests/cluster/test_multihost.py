"""A cluster on four simulated hosts (network namespaces, tests/netns.py): the coordinator on h0, two
workers on h1 and h2, the client on h3. A pipeline whose task carries a connection password and
whose rows cross from one worker to the other runs to the end, while a capture on the bridge
between the hosts records every frame. With CURVE on, the captured bytes hold neither the password
nor a readable control message; with CURVE off (the control run) they do, so the search can fail.

The data plane: Flight between workers is TLS-encrypted only when the worker accepts ``--tls-cert``
(``TLS_AVAILABLE``). Without it, the row values are expected in clear on the Flight streams, and the
test asserts that they are, so that it documents what a capture sees today and turns into the
"no row value in clear" check by itself once TLS is in: ``expect_rows_in_clear = not tls``.

Why the password comes from ``demo.numbers`` (tests/osiris_plugin.py): a MySQL connection would
need a server the namespaces can reach, and MariaDB listens on 127.0.0.1 of the root namespace.
What matters here is that the resolved connection, password included, is sent in ``SubmitRun``
(client to coordinator) and ``AssignTask`` (coordinator to worker); a step that names the connection
and never connects makes exactly that traffic.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cluster.conftest import BIN, read_csv
from tests.cluster.multihost import Cluster, make_keys, start_cluster, tls_available
from tests.netns import CaptureResult, Network, cgroup_cpu_usage_us, unavailable

# Generous: four daemons and a run on a loaded 2-core machine; no step's duration is asserted.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

SECRET = "pw-3Kq9-multihost-secret"
CONNECTION_HOST = "db-multihost.internal"
ROWS = 4000
CITIES = 7


def name_of(i: int) -> str:
    return f"zebu-quokka-{i:05d}"


def city_of(i: int) -> str:
    return f"vexillum-{i % CITIES}"


PIPELINE = """
oml_version: "0.2.0"
name: multihost
steps:
  - id: people
    component: filesystem.parquet_extractor
    mode: read
    config: {{path: {data}, partitions: 2}}
  - id: by_city
    component: transform.aggregator
    mode: transform
    depends_on: [people]
    config:
      group_by: [city]
      aggregations: {{people: count, score: sum}}
  - id: write_cities
    component: filesystem.csv_writer
    mode: write
    depends_on: [by_city]
    config: {{path: {out}/cities.csv}}
  - id: by_name
    component: transform.aggregator
    mode: transform
    depends_on: [people]
    config:
      group_by: [name]
      aggregations: {{score: max}}
  - id: write_names
    component: filesystem.csv_writer
    mode: write
    depends_on: [by_name]
    config: {{path: {out}/names.csv}}
  - id: numbers
    component: demo.numbers
    mode: read
    config: {{count: 100, connection: "@demo.main"}}
  - id: write_numbers
    component: filesystem.csv_writer
    mode: write
    depends_on: [numbers]
    config: {{path: {out}/numbers.csv}}
"""


def write_client_files(cluster: Cluster) -> None:
    """The pipeline and the connections file (its password from the client's environment)."""
    (cluster.client_dir / "osiris_connections.yaml").write_text(
        "version: 1\nconnections:\n  demo:\n    main:\n"
        f"      host: {CONNECTION_HOST}\n      user: app\n"
        '      password: "${OSIRIS_TEST_SECRET}"\n'
    )
    data, out = cluster.root / "people.parquet", cluster.root / "out"
    (cluster.client_dir / "pipeline.yaml").write_text(PIPELINE.format(data=data, out=out))


def people() -> pa.Table:
    return pa.table(
        {
            "id": list(range(ROWS)),
            "name": [name_of(i) for i in range(ROWS)],
            "city": [city_of(i) for i in range(ROWS)],
            "score": [i % 101 for i in range(ROWS)],
        }
    )


def run_pipeline(cluster: Cluster) -> dict:
    write_client_files(cluster)
    done = cluster.client_run(
        [str(BIN / "osiris-flight"), "run", "pipeline.yaml", "--cluster", cluster.address, "--json"],
        env={"OSIRIS_TEST_SECRET": SECRET},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "success", summary
    return summary


def check_outputs(root: Path, table: pa.Table) -> None:
    cities = read_csv(root / "out/cities.csv").sort_by("city")
    want = table.group_by("city").aggregate([("id", "count"), ("score", "sum")]).sort_by("city")
    assert cities.column("city").to_pylist() == want.column("city").to_pylist()
    assert cities.column("people").to_pylist() == want.column("id_count").to_pylist()
    assert cities.column("score").to_pylist() == want.column("score_sum").to_pylist()
    names = read_csv(root / "out/names.csv")
    assert sorted(names.column("name").to_pylist()) == sorted(table.column("name").to_pylist())
    assert read_csv(root / "out/numbers.csv").num_rows == 100


def control_streams(cap: CaptureResult, cluster: Cluster) -> dict:
    """Every stream to or from the coordinator's port."""
    return {flow: data for flow, data in cap.streams.items() if cluster.port in (flow[1], flow[3])}


def flight_streams(cap: CaptureResult, cluster: Cluster) -> dict:
    """Streams between the two workers: only Flight goes from worker to worker."""
    a, b = (host.address for host in cluster.workers)
    return cap.between(a, b)


def row_values_seen(data: dict) -> list[str]:
    stream = b"".join(data.values())
    return [name_of(i) for i in range(ROWS) if name_of(i).encode() in stream]


def test_multihost_run_with_curve_leaks_no_secret_on_the_wire(tmp_path: Path) -> None:
    reason = unavailable()
    assert reason is None, reason  # root and iproute2 are part of this project's test machine
    pq.write_table(people(), tmp_path / "people.parquet", row_group_size=ROWS // 8)
    keys = make_keys(tmp_path, workers=2)
    tls = tls_available()
    expect_rows_in_clear = not tls
    with Network(hosts=4) as net:
        net.wait_reachable()
        with net.capture(tmp_path) as capture:
            cluster = start_cluster(net, tmp_path, workers=2, keys=keys)
            run_pipeline(cluster)
        cap = capture.stop()
    check_outputs(tmp_path, people())

    # The capture is complete: every frame kept whole, none dropped by the kernel.
    assert cap.frames > 0 and cap.truncated == 0 and cap.kernel_drops == 0, cap
    addresses = {h.address for h in net.hosts}
    assert all(pair <= addresses for pair in cap.address_pairs())

    # Control plane: each worker and the client talked to the coordinator, through the bridge.
    control = control_streams(cap, cluster)
    for host in [*cluster.workers, cluster.client]:
        talk = cap.between(host.address, cluster.coordinator.address, cluster.port)
        assert sum(len(d) for d in talk.values()) > 0, host
    assert sum(len(d) for d in control.values()) > 2000
    # The ZMTP greeting (sent in clear) names the CURVE mechanism on every control connection, so
    # the capture holds these streams from their first byte.
    greetings = [flow for flow, data in control.items() if flow[3] == cluster.port and b"CURVE" in data[:64]]
    assert len(greetings) >= 3, sorted(control)
    everything = b"".join(cap.streams.values())
    assert SECRET.encode() not in everything
    assert CONNECTION_HOST.encode() not in everything
    for op in (b"assign_task", b"submit_run", b"register", b"task_finished"):
        assert op not in everything, op

    # Data plane: rows went from one worker to the other over Flight (a consumer reads both
    # partitions, which ran one on each worker).
    flight = flight_streams(cap, cluster)
    assert sum(len(d) for d in flight.values()) > 0, sorted(cap.streams)
    if expect_rows_in_clear:
        # Flight is plain gRPC while the worker has no TLS: the HTTP/2 preface and the row values
        # are readable by anyone on the path. Asserted, so that the capture is known to see them.
        assert b"PRI * HTTP/2.0" in b"".join(flight.values())
        assert row_values_seen(flight), "Flight carried rows but none was found in clear"
    else:
        assert b"PRI * HTTP/2.0" not in everything
        assert row_values_seen(flight) == []
    # Rows travel nowhere else.
    others = {flow: data for flow, data in cap.streams.items() if flow not in flight}
    assert row_values_seen(others) == []


def test_multihost_control_run_without_curve_shows_the_secret(tmp_path: Path) -> None:
    """The same cluster without keys: the capture does see the password and the messages, so the
    test above would notice them. Its workers run under a CPU cap of half a core each (the setup a
    scaling benchmark uses), which must not change the result."""
    assert unavailable() is None
    pq.write_table(people(), tmp_path / "people.parquet", row_group_size=ROWS // 8)
    with Network(hosts=4) as net:
        net.wait_reachable()
        with net.capture(tmp_path) as capture:
            cluster = start_cluster(net, tmp_path, workers=2, keys=None, worker_cpus=0.5)
            run_pipeline(cluster)
            groups = [host.cgroup() for host in cluster.workers]
            assert all(group is not None and cgroup_cpu_usage_us(group) > 0 for group in groups)
        cap = capture.stop()
    check_outputs(tmp_path, people())
    assert cap.truncated == 0 and cap.kernel_drops == 0, cap
    control = control_streams(cap, cluster)
    with_secret = [flow for flow, data in control.items() if SECRET.encode() in data]
    # SubmitRun from the client and AssignTask to the worker that ran `numbers`.
    assert {flow[0] for flow in with_secret} >= {cluster.client.address, cluster.coordinator.address}
    assert any(b"assign_task" in data for data in control.values())
    assert row_values_seen(flight_streams(cap, cluster))
