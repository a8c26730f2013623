"""The checked-in generated code equals what scripts/gen_proto.py produces."""

import importlib.util
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_generated_code_is_current(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    (out / "services/common/pb").mkdir(parents=True)
    shutil.copy(ROOT / "services/common/pb/pool.py", out / "services/common/pb/pool.py")
    generated = module.generate(out)
    assert generated
    names = {path.name for path in generated}
    assert {"inference_pb2.py", "registration_pb2.py", "registration_pb2_grpc.py"} <= names
    checked_in = {path.name for path in (ROOT / "services/common/pb").glob("*_pb2*.py*")}
    assert checked_in == names, "a generated file has no .proto any more: run `make proto`"
    for path in generated:
        checked_in = ROOT / path.relative_to(out)
        assert checked_in.read_text() == path.read_text(), (
            f"{checked_in} is stale: run `make proto`"
        )


def test_coexists_with_tritonclient():
    import tritonclient.grpc.service_pb2 as triton_pb

    from services.common.pb import inference_pb2 as pb

    message = pb.ModelInferRequest(model_name="m", id="1")
    message.inputs.add(name="x", datatype="INT64", shape=[1]).contents.int64_contents.append(5)
    theirs = triton_pb.ModelInferRequest.FromString(message.SerializeToString())
    assert theirs.inputs[0].contents.int64_contents == [5]
    # Triton's superset parameter fields share our numbers.
    param = pb.InferParameter(uint64_param=7)
    assert triton_pb.InferParameter.FromString(param.SerializeToString()).uint64_param == 7
