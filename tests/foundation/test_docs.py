"""The README's configuration table, .env.example and docker-compose.yml agree with the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from common.settings import all_variables
from ops.docs import env_example, readme_with_table
from ops.kafka_local import KAFKA_VERSION

ROOT = Path(__file__).resolve().parents[2]


def test_readme_lists_every_setting_and_is_current():
    readme = (ROOT / "README.md").read_text()
    for name, *_ in all_variables():
        assert f"`{name}`" in readme, name
    assert readme == readme_with_table(readme), "run: python -m ops.docs update"
    assert "make up" in readme and "make test" in readme


def test_env_example_is_current():
    assert (ROOT / ".env.example").read_text() == env_example(), "run: python -m ops.docs update"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_compose_agrees_with_settings():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    kafka = services["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert kafka["environment"]["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == 1
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    internal = re.search(r"INTERNAL://([\w.-]+:\d+)", kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"])
    known = {name for name, *_ in all_variables()}
    for name in ("connector", "worker", "sink", "topics"):
        env = services[name]["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == internal.group(1), name
        unknown = {v.removeprefix("SFPROV_SANDBOX_") for v in env} - known
        assert not unknown, f"{name} sets variables the code does not read: {unknown}"
        # topic names: the code's defaults, or .env's (never fixed here: test_compose)
        assert not {v for v in env if v.startswith("KAFKA_TOPIC_")}, name
    from ops.container import COMMANDS

    for name, module in (("connector", "connectors"), ("worker", "streams"), ("sink", "sinks")):
        assert services[name]["command"] == ["python", "-m", "ops.container", name]
        assert COMMANDS[name][0] == module


def test_compose_pipeline_finds_the_sandboxes_files_and_ports():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    sf_cmd = services["salesforce-sandbox"]["command"]
    sf_dir = sf_cmd[sf_cmd.index("--dir") + 1]
    env = services["connector"]["environment"]
    assert env["SFPROV_SANDBOX_SF_PRIVATE_KEY_PATH"] == f"{sf_dir}/jwt/private-key.pem"
    assert env["SFPROV_SANDBOX_SF_CA_BUNDLE"] == f"{sf_dir}/tls/ca.pem"
    grpc_port = sf_cmd[sf_cmd.index("--grpc-port") + 1]
    assert env["SFPROV_SANDBOX_SF_PUBSUB_ENDPOINT"] == f"salesforce-sandbox:{grpc_port}"
    wh_cmd = services["whmcs-sandbox"]["command"]
    wh_port = wh_cmd[wh_cmd.index("--port") + 1]
    assert f"whmcs-sandbox:{wh_port}/includes/api.php" in env["SFPROV_SANDBOX_WHMCS_API_URL"]


def test_docs_check_says_which_file_is_stale(tmp_path, capsys):
    import ops.docs as docs
    for name in ("README.md", ".env.example"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    assert docs.main(["check"], tmp_path) == 0
    (tmp_path / ".env.example").write_text(env_example() + "# edited by hand\n")
    assert docs.main(["check"], tmp_path) == 1
    assert ".env.example is out of date" in capsys.readouterr().err
    assert docs.main(["update"], tmp_path) == 0 and docs.main(["check"], tmp_path) == 0
    assert docs.main(["chek"], tmp_path) == 2 and "usage:" in capsys.readouterr().err


def test_readme_lists_every_outcome_error_code():
    """Analysts filter on `error_code`: every code the worker can write is in the README's
    list (five were missing from it), and the list names none the worker cannot write."""
    written = set()
    for path in (ROOT / "streams").glob("*.py"):
        written |= set(re.findall(
            r'(?:error_code\s*=\s*|MappingError\(\s*|Final\(\s*[A-Z]+,\s*)"([A-Z][A-Z_]+)"',
            path.read_text()))
    assert {"MISSING_WHMCS_CLIENT", "NOT_ACTIVATING", "DUPLICATE_WHMCS_ORDERS"} <= written
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `error_code` |"))
    settings = {name for name, *_ in all_variables()}
    listed = set(re.findall(r"`([A-Z][A-Z_]{3,})`", row)) - settings
    assert written - listed == set(), "codes the README's error_code row does not list"
    assert listed - written == set(), "codes the README lists that no code writes"


def test_readme_and_schema_say_duplicate_whmcs_order_ids_come_on_failed_outcomes_too():
    """A lookup that finds two Pending orders keeps one and cancels the other; accepting the
    kept one then fails: the outcome is `Failed` (`WHMCS_ERROR`) and still lists the
    cancelled order in `duplicate_whmcs_order_ids` (``_failed_after`` carries it). The
    README's row and the schema's doc said the field was filled only on a `Provisioned`
    outcome with `DUPLICATE_WHMCS_ORDERS` — an analyst filtering on that code missed the
    crossed fence."""
    provision = (ROOT / "streams" / "provision.py").read_text()
    failed_after = provision[provision.index("def _failed_after("):]
    failed_after = failed_after[:failed_after.index("\ndef ")]
    assert "duplicate_ids=" in failed_after, "Failed outcomes no longer carry duplicates"
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines()
               if line.startswith("| `duplicate_whmcs_order_ids` |"))
    assert "`Failed`" in row and "`Provisioned`" in row, row
    assert "`DUPLICATE_WHMCS_ORDERS`" in row, row
    schema = json.loads((ROOT / "schemas" / "provisioning_outcome.avsc").read_text())
    doc = next(f["doc"] for f in schema["fields"] if f["name"] == "duplicate_whmcs_order_ids")
    assert "Failed" in doc and "Provisioned" in doc, doc


def test_the_outcome_schemas_doc_names_the_readmes_dedupe_key():
    """The schema's doc (what registry tools show analysts) said one record per
    (order_id, idem_key): keeping the last per that pair replaced a decision with its
    Duplicate."""


    key = "(order_id, idem_key, event_uuid)"
    doc = json.loads((ROOT / "schemas" / "provisioning_outcome.avsc").read_text())["doc"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"Deduplicate on {key}".replace("(", "`(").replace(")", ")`") in readme
    assert f"dedupe on {key}" in doc
    assert "per (order_id, idem_key)" not in doc


def test_the_fenced_row_names_every_stage_the_handler_fences_at():
    """`sfprov_worker_fenced_total{stage}`: each stage the worker's event path asks the
    lease at is explained in the README's troubleshooting row."""
    source = (ROOT / "streams" / "handler.py").read_text()
    stages = set(re.findall(r'self\._own\(rec, "(\w+)"', source))
    assert {"intent", "record", "send", "mark"} <= stages, stages
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines()
               if line.startswith("| `fenced: partition P is not assigned"))
    assert all(f"`{stage}`" in row for stage in stages), stages


def test_the_declared_grpc_and_protobuf_floors_run_the_generated_stubs():
    """`pip install .` into an environment with an older grpcio or protobuf met the
    declared floors, and the connector died at import on every start (the stubs refuse an
    older runtime)."""
    import tomllib

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(x) for x in text.split("."))
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {m.group(1): version(m.group(2)) for d in deps
              if (m := re.match(r"(grpcio|protobuf)>=([\d.]+)", d))}
    for stubs in ("connectors/pubsub/generated", "sandbox/salesforce/generated"):
        grpc_stub = (ROOT / stubs / "pubsub_api_pb2_grpc.py").read_text()
        needs = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_stub)
        assert needs and floors["grpcio"] >= version(needs.group(1)), (stubs, floors)
        pb = (ROOT / stubs / "pubsub_api_pb2.py").read_text()
        gencode = re.search(r"Protobuf Python Version: ([\d.]+)", pb)
        assert gencode and floors["protobuf"] >= version(gencode.group(1)), (stubs, floors)
