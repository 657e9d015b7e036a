"""The offload-plan cost model: hand-computed roofline points, the batch that fits, link traffic,
Lamina's qualitative result, and bad input as SimulatorError / one line with exit code 2."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from einfuse.cli import cli, main
from einfuse.errors import SimulatorError
from einfuse.simulator import offload as om

L70 = om.get_model("llama-70b")
H100 = om.get_device("h100")
H20 = om.get_device("h20")


def test_llama70b_shape_gives_its_weight_and_kv_sizes():
    assert L70.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2 == 327_680
    assert 70.4e9 < L70.weight_bytes / 2 < 70.7e9  # ~70.6B parameters in bf16
    assert L70.link_bytes_per_token == 80 * (2 * 64 + 2 * 8) * 128 * 2


def test_attention_time_is_kv_bytes_over_bandwidth_when_memory_bound():
    # 10 sequences x 4K keys on one H20: 13.4 GB of KV at 4.0 TB/s; FLOPs (0.11 TFLOP) take 0.73 ms < 3.36 ms
    kv = 10 * 4096 * 327_680
    assert om.attention_time(L70, H20, 1, 10, 4096) == pytest.approx(kv / 4.0e12)
    assert om.attention_time(L70, H20, 4, 10, 4096) == pytest.approx(kv / 4.0e12 / 4)


def test_nonattention_time_is_weight_read_at_small_batch_and_flops_at_large_batch():
    p = L70.matmul_params
    assert om.nonattention_time(L70, H100, 2, 1) == pytest.approx(2 * p / (2 * 3.35e12))
    assert om.nonattention_time(L70, H100, 1, 1024) == pytest.approx(2 * p * 1024 / 989e12)


def test_batch_that_fits_is_free_hbm_over_kv_per_sequence():
    homo = om.homogeneous(L70, H100, 8, 4096)
    assert homo.batch == int((8 * 80e9 * 0.9 - L70.weight_bytes) // (4096 * 327_680)) == 324
    assert om.homogeneous(L70, H100, 2, 131072) is None  # 144 GB usable, 141 GB of weights
    off = om.offload(L70, H100, 2, H20, 4, 4096)
    assert off.batch == int(4 * 96e9 * 0.9 // (4096 * 327_680)) == 257
    assert om.offload(L70, H100, 1, H20, 4, 4096) is None  # weights do not fit on one H100
    assert om.offload(L70, H100, 2, H20, 4, 4096, max_batch=16).batch == 16


def test_offload_step_overlaps_compute_attention_and_link_unless_serial():
    off = om.offload(L70, H100, 2, H20, 4, 4096)
    assert off.t_link == pytest.approx(257 * L70.link_bytes_per_token / min(2 * 50e9, 4 * 50e9))
    assert off.step == max(off.t_nonattention, off.t_attention, off.t_link) and off.link_ok
    serial = om.offload(L70, H100, 2, H20, 4, 4096, pipelined=False)
    assert serial.step == pytest.approx(off.t_nonattention + off.t_attention + off.t_link)
    assert off.price == 2 * H100.price + 4 * H20.price
    assert off.tokens_per_dollar == pytest.approx(257 / off.step * 3600 / off.price)


def test_a_slow_link_is_flagged():
    slow = om.Device("slow", H20.flops, H20.hbm_bw, H20.hbm, H20.price, link=1e9)
    assert not om.offload(L70, H100, 2, slow, 4, 4096).link_ok


def test_offloading_to_h20_raises_tokens_per_dollar_more_as_context_grows():
    contexts = om.parse_contexts("4K..128K")
    gains = [o.tokens_per_dollar / h.tokens_per_dollar for h, o in om.plan(L70, H100, H20, contexts)]
    assert all(g > 1 for g in gains)
    assert all(b >= a - 1e-9 for a, b in zip(gains, gains[1:])) and gains[-1] > 1.48 and gains[-1] > gains[0]


def test_parse_contexts_doubles_over_a_range_and_takes_lists():
    assert om.parse_contexts("4K..32K") == [4096, 8192, 16384, 32768]
    assert om.parse_contexts("1K,3K") == [1024, 3072]
    for bad in ("128K..4K", "x..4K", "4K..", "0"):
        with pytest.raises(SimulatorError):
            om.parse_contexts(bad)


@pytest.mark.parametrize("call", [lambda: om.get_model("llama-99b"), lambda: om.get_device("tpu"),
                                  lambda: om.load_catalogue("/nonexistent.yaml"),
                                  lambda: om.plan(L70, H100, H20, [4096], memory_counts=(0,)),
                                  lambda: om.with_price(H20, 0)])
def test_bad_input_raises_simulator_error(call):
    with pytest.raises(SimulatorError):
        call()


def test_cli_prints_the_table_and_writes_results_and_plot(tmp_path):
    r = CliRunner().invoke(cli, ["offload-plan", "--model", "llama-70b", "--context", "4K..16K",
                                 "--devices", "h100,h20", "--plot", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "2xh100+4xh20" in r.output and "8xh100" in r.output and "16K" in r.output
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [row["context"] for row in rows] == [4096, 8192, 16384] and rows[0]["gain"] > 1
    assert (tmp_path / "offload.png").stat().st_size > 0


def test_cli_json_and_overrides():
    r = CliRunner().invoke(cli, ["offload-plan", "--context", "32K", "--compute-count", "4", "--memory-count", "8",
                                 "--price", "h20=2.0", "--json"])
    row = json.loads(r.output)[0]
    assert row["offload"]["devices"] == "4xh100+8xh20" and row["offload"]["price"] == 4 * 3.0 + 8 * 2.0


@pytest.mark.parametrize("args", [["--model", "llama-99b"], ["--devices", "h100"], ["--devices", "h100,tpu"],
                                  ["--context", "128K..4K"], ["--price", "h20"], ["--memory-count", "0"],
                                  ["--max-batch", "0"]])
def test_cli_bad_input_is_one_line_and_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["offload-plan", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error:") and err.count("\n") == 1, err


def test_cli_bad_input_from_the_shell():
    r = subprocess.run([sys.executable, "-m", "einfuse.cli", "offload-plan", "--model", "llama-99b"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == "error: unknown model 'llama-99b' (known: llama-8b, llama-70b, llama-405b)\n"
