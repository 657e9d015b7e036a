"""Architecture files: every shipped design loads, and bad files fail with an error naming the key."""

import pytest
import yaml

from einfuse.errors import SimulatorError
from einfuse.simulator.arch import builtin_arch_names, load_arch

DESIGNS = ("unfused", "flat", "fusemax", "fusemax-cascade", "fusemax-arch", "systolic")


def test_every_design_ships_and_loads():
    assert set(DESIGNS) <= set(builtin_arch_names())
    for name in DESIGNS:
        a = load_arch(name)
        assert a.name == name
        assert a.global_buffer.total_bytes > 0 and a.dram_bytes_per_cycle > 0


def test_fusemax_parameters_follow_the_paper():
    a = load_arch("fusemax")
    assert (a.pe_array.rows, a.pe_array.cols, a.vector_array.cols) == (256, 256, 256)
    assert a.global_buffer.total_bytes == 16 * 2**20
    assert a.clock_hz == pytest.approx(940e6)
    assert a.dram_bytes_per_s == pytest.approx(400 * 2**30)
    exp = a.pe_array.ops["exp"]
    assert exp.cycles == 6 and exp.actions == {"mac": 6}      # 6 MACs, no exp unit
    assert "div" not in a.pe_array.ops and "div" in a.vector_array.ops
    flat = load_arch("flat")
    assert flat.global_buffer.total_bytes == 32 * 2**20
    # the ablations inherit their base design and change only the mapping
    assert load_arch("fusemax-arch").pe_array == a.pe_array
    assert load_arch("fusemax-arch").mapping.pipeline_window == 1
    assert load_arch("fusemax-cascade").vector_array == flat.vector_array
    assert load_arch("fusemax-cascade").mapping.lowering == "online_softmax"


def _write(tmp_path, mutate):
    from importlib import resources

    data = yaml.safe_load(resources.files("einfuse.simulator").joinpath("archs", "systolic.yaml").read_text())
    mutate(data)
    path = tmp_path / "arch.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d["pe_array"].update(colums=4), ["pe_array", "unknown key 'colums'", "did you mean cols"]),
    (lambda d: d["buffers"][2].update(size_bytes=-5), ["buffers[2].size_bytes", "negative"]),
    (lambda d: d["vector_array"]["ops"].pop("div"), ["'div'", "not supported by any unit"]),
    (lambda d: d["pe_array"]["ops"].update(expp={"cycles": 1}), ["unknown op 'expp'", "did you mean exp"]),
    (lambda d: d["pe_array"]["ops"]["mac"].update(actions={"fma": 1}), ["action 'fma'", "energy_pj"]),
    (lambda d: d["mapping"].update(fusion="everything"), ["mapping.fusion", "row_block"]),
    (lambda d: d.pop("dram"), ["missing key 'dram'"]),
    (lambda d: d.update(clock_hz="fast"), ["clock_hz", "expected a number"]),
])
def test_bad_files_name_the_offending_key(tmp_path, mutate, words):
    path = _write(tmp_path, mutate)
    with pytest.raises(SimulatorError) as err:
        load_arch(path)
    for w in words:
        assert w in str(err.value)


def test_extends_merges_over_a_base(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: fusemax\nname: mine\nmapping: {pipeline_window: 3}\nbuffers:\n"
                    "  - {name: global, size_bytes: 1048576}\n")
    a = load_arch(str(path))
    assert a.name == "mine" and a.mapping.pipeline_window == 3 and a.mapping.interleave
    assert a.global_buffer.total_bytes == 2**20 and a.buffer("rf_2d") is None


def test_unknown_design_suggests_a_name():
    with pytest.raises(SimulatorError, match="did you mean fusemax"):
        load_arch("fusemx")
