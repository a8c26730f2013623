"""The launcher's scale-out pieces without model processes: the run file, the command folder,
replica naming and removal, the planning child's CLI, and a launcher that never loads torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import yaml

from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.common.model_list import Endpoints, MeshPlan, ModelEntry, load_model_list
from services.launcher import plan as planning
from services.launcher.plan import ProcessSpec, plan_processes
from services.launcher.replicas import Replicas
from services.launcher.runstate import CommandBox, RunState, RunStateError
from services.launcher.supervisor import Supervisor
from tests.unit.test_torch_free import heavy_modules


def _state(tmp_path, pid: int) -> RunState:
    return RunState(
        pid=pid,
        control_plane="127.0.0.1:18000",
        model_list=str(tmp_path / "mesh.yaml"),
        log_dir=str(tmp_path),
        bootstrap=str(tmp_path / "xds-bootstrap.json"),
        commands=str(tmp_path / "commands"),
        gateway="http://127.0.0.1:8080",
    )


def test_run_file_round_trip_stale_and_removal(tmp_path):
    path = tmp_path / "run" / "launcher.json"
    with pytest.raises(RunStateError, match="no running launcher: .* does not exist"):
        RunState.read(path)
    state = _state(tmp_path, pid=os.getpid())
    state.write(path)
    assert RunState.read(path) == state
    _state(tmp_path, pid=state.pid + 1).remove(path)  # another launcher's file stays
    assert path.exists()
    state.remove(path)
    assert not path.exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _state(tmp_path, pid=dead.pid).write(path)
    with pytest.raises(RunStateError, match=f"is stale \\(pid {dead.pid} is gone\\)"):
        RunState.read(path)


def test_a_command_is_answered_through_the_folder(tmp_path):
    box = CommandBox(tmp_path)
    seen: list[dict] = []

    def echo(command: dict) -> dict:
        seen.append(command)
        return {"ok": True, "echo": command}

    def launcher_loop() -> None:
        while not seen:
            box.serve(echo)

    thread = threading.Thread(target=launcher_loop)
    thread.start()
    answer = box.send({"action": "add_replica", "model": "m"}, timeout=10)
    thread.join()
    assert answer == {"ok": True, "echo": {"action": "add_replica", "model": "m"}}
    assert list(tmp_path.iterdir()) == []  # command and answer both consumed
    with pytest.raises(RunStateError, match="did not answer within 0.2s"):
        box.send({"action": "add_replica", "model": "m"}, timeout=0.2)
    assert list(tmp_path.iterdir()) == []


class _Popen:
    pid = 1


class _Started:
    """What `Supervisor.add` returns, as far as `Replicas` reads it."""

    process = _Popen()
    log_path = "x.log"


class _Recorder(Supervisor):
    """Records what it would start and stop instead of doing it."""

    def __init__(self) -> None:
        super().__init__(report=lambda line: None)
        self.started: list[ProcessSpec] = []
        self.removed: list[str] = []

    def add(self, spec):  # type: ignore[override]
        self.started.append(spec)
        self.entries[spec.name] = None  # type: ignore[assignment]
        return _Started()

    def remove(self, name):  # type: ignore[override]
        del self.entries[name]
        self.removed.append(name)

    @property
    def processes(self):  # type: ignore[override]
        return {name: _Started() for name in self.entries}


def _plan() -> MeshPlan:
    entry = ModelEntry(
        name="m", source="/models/m", task=Task.TEXT_GENERATION, backend="vllm", replicas=2
    )
    entry.fallback = "huggingface"
    return MeshPlan(models=[entry], endpoints={"m": Endpoints()})


def _replicas(env: dict[str, str] | None = None) -> tuple[Replicas, _Recorder]:
    """Replicas of a mesh planned as `plan_processes` plans it: two vLLM engines, two HF."""
    supervisor = _Recorder()
    plan = _plan()
    specs = plan_processes(plan, host="127.0.0.1", base_port=7000, mesh_file="mesh.yaml")
    for spec in specs:
        supervisor.entries[spec.name] = None  # type: ignore[assignment]
    return Replicas(plan, supervisor, env or {}, planned=specs), supervisor


def test_replicas_are_named_after_the_planned_ones_and_removed_last_first():
    replicas, supervisor = _replicas({"HFMESH_CONTROL_PLANE": "127.0.0.1:18000"})
    assert (replicas.count("m"), replicas.count("m", "huggingface")) == (2, 2)
    first = replicas.add("m")
    second = replicas.add("m", "huggingface")
    third = replicas.add("m")
    assert [first.name, second.name, third.name] == ["vllm-m-2", "huggingface-m-2", "vllm-m-3"]
    assert first.module == "services.engine_vllm" and second.module == "services.engine_hf"
    assert first.args[:4] == ["--model_dir", "/models/m", "--model_name", "m"]
    assert first.env == {"HFMESH_CONTROL_PLANE": "127.0.0.1:18000"}
    assert (first.model, first.backend) == ("m", "vllm")
    assert len({first.port, second.port, third.port}) == 3

    assert replicas.remove("m", "huggingface") == "huggingface-m-2"
    assert replicas.remove("m") == "vllm-m-3"
    assert replicas.remove("m") == "vllm-m-2"
    assert replicas.remove("m") == "vllm-m-1"  # then the planned ones, never the last
    with pytest.raises(InvalidArgument, match="'m' has one vllm replica left; the mesh keeps it"):
        replicas.remove("m")
    assert replicas.remove("m", "huggingface") == "huggingface-m-1"
    with pytest.raises(InvalidArgument, match="'m' has one huggingface replica left"):
        replicas.remove("m", "huggingface")
    assert supervisor.removed[:4] == ["huggingface-m-2", "vllm-m-3", "vllm-m-2", "vllm-m-1"]


def test_scale_adds_and_removes_to_a_count_zero_included():
    replicas, supervisor = _replicas()
    replicas.scale("m", 4)
    assert [s.name for s in supervisor.started] == ["vllm-m-2", "vllm-m-3"]
    replicas.scale("m", 0)
    assert supervisor.removed == ["vllm-m-3", "vllm-m-2", "vllm-m-1", "vllm-m-0"]
    with pytest.raises(InvalidArgument, match="'m' has no vllm replica to remove"):
        replicas.remove("m")
    replicas.scale("m", 1)
    assert supervisor.started[-1].name == "vllm-m-2"
    assert replicas.count("m") == 1 and replicas.count("m", "huggingface") == 2


def test_replica_commands_answer_errors_plainly():
    replicas, _ = _replicas()
    assert replicas.handle({"action": "add_replica", "model": "other"}) == {
        "ok": False,
        "message": "model 'other' is not in the mesh (it serves m)",
    }
    wrong = replicas.handle({"action": "add_replica", "model": "m", "backend": "triton"})
    assert wrong == {
        "ok": False,
        "message": "model 'm' is served by vllm and huggingface, not triton",
    }
    assert replicas.handle({"action": "scale", "model": "m"})["message"] == "unknown action 'scale'"
    assert replicas.handle({"action": "add_replica"})["message"] == "the command names no model"
    added = replicas.handle({"action": "add_replica", "model": "m", "backend": None})
    assert added["ok"] and added["name"] == "vllm-m-2" and added["pid"] == 1
    assert replicas.handle({"action": "remove_replica", "model": "m"}) == {
        "ok": True,
        "name": "vllm-m-2",
    }


def _folder(tmp_path, name: str, architecture: str) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    return str(folder)


def test_the_planning_child_writes_the_planned_list(tmp_path, capsys):
    raw = tmp_path / "list.yaml"
    raw.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {"name": "a", "source": _folder(tmp_path, "a", "BertModel"), "replicas": 2},
                    {"name": "b", "source": _folder(tmp_path, "b", "BertForMaskedLM")},
                ]
            }
        )
    )
    out = tmp_path / "mesh.yaml"
    common = ["--model_list", str(raw), "--out", str(out), "--base_port", "7000", "--no_vllm"]
    assert planning.main([*common, "--models", "a"]) == 0
    plan = load_model_list(out)
    assert [m.name for m in plan.models] == ["a"]
    assert plan.endpoints["a"].tokenizer == ["127.0.0.1:7000"]
    assert plan.endpoints["a"].engines == {"huggingface": ["127.0.0.1:7001", "127.0.0.1:7002"]}
    assert planning.main([*common, "--models", "a,zz"]) == 2
    assert "hfmesh: not in the model list: zz" in capsys.readouterr().err


# The launcher's own process: its module, its argument parsing, and what its main loop calls.
LAUNCHER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import services.launcher.__main__ as main
    from services.common.model_list import load_model_list
    from services.control_plane.bootstrap import write_bootstrap
    from services.launcher.plan import control_plane_process, gateway_process, plan_processes
    from services.launcher.processes import grpc_serving, http_ok
    from services.launcher.replicas import Replicas
    from services.launcher.runstate import CommandBox
    from services.launcher.supervisor import Supervisor
    folder = Path(sys.argv[1])
    main.parse_args(["--model_list", str(folder / "mesh.yaml")])
    plan = load_model_list(folder / "mesh.yaml")
    plan_processes(plan, host="127.0.0.1", base_port=7000, mesh_file="mesh.yaml")
    control_plane_process("mesh.yaml", host="127.0.0.1", port=18000)
    gateway_process("mesh.yaml", host="127.0.0.1", port=8080)
    write_bootstrap(folder / "xds-bootstrap.json", "127.0.0.1:18000", "hfmesh")
    supervisor = Supervisor(log_dir=folder)
    supervisor.poll()
    box = CommandBox(folder)
    (folder / "c.json").write_text('{"action": "remove_replica", "model": "chat"}')
    box.serve(Replicas(plan, supervisor, {}).handle)
    grpc_serving("127.0.0.1:1", timeout=0.1)
    http_ok("http://127.0.0.1:1/", timeout=0.1)
    supervisor.stop_all(last=["control_plane"])
    """
)


def test_the_launcher_process_never_imports_torch(tmp_path):
    source = _folder(tmp_path, "chat", "LlamaForCausalLM")
    plan = MeshPlan(
        models=[ModelEntry(name="chat", source=source, task=Task.TEXT_GENERATION)],
        endpoints={"chat": Endpoints(["127.0.0.1:7000"], {"huggingface": ["127.0.0.1:7001"]})},
    )
    (tmp_path / "mesh.yaml").write_text(plan.to_yaml())
    assert heavy_modules(LAUNCHER, str(tmp_path)) == []
    assert "'chat' has no huggingface replica to remove" in (tmp_path / "c.reply.json").read_text()
