import pytest

from bench.hardware import peak_tflops


def test_peak_depends_on_the_arithmetic_used():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16", tf32=True) == 989.4
    assert peak_tflops("NVIDIA H100 80GB HBM3", "fp32", tf32=True) == 494.7
    assert peak_tflops("NVIDIA H100 80GB HBM3", "fp32", tf32=False) == 66.9


def test_specific_names_win_and_unknown_devices_get_none():
    assert peak_tflops("NVIDIA H100 PCIe", "fp16", tf32=False) == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16", tf32=False) == 312.0
    assert peak_tflops("Tesla V100-SXM2-16GB", "fp32", tf32=True) is None  # no TF32 on Volta
    assert peak_tflops("Some Future GPU", "bf16", tf32=False) is None


@pytest.mark.parametrize(("name", "precision", "tf32", "peak"), [
    ("NVIDIA H200", "bf16", False, 989.4),
    ("NVIDIA H100 PCIe", "fp32", True, 378.0),
    ("NVIDIA A100 80GB PCIe", "fp32", True, 156.0),
    ("A100-SXM4-40GB", "fp16", False, 312.0),  # older drivers leave out "NVIDIA"
    ("NVIDIA L40S", "bf16", False, 362.1),
    ("NVIDIA L4", "bf16", False, 121.0),
    ("NVIDIA A10", "fp32", False, 31.2),
    ("NVIDIA GeForce RTX 4090", "fp32", True, 82.6),
    ("Tesla V100-SXM2-32GB", "fp16", False, 125.0),
    ("Tesla  T4 ", "fp32", False, 8.1),  # spaces as a driver might pad them
])
def test_known_names_get_their_peaks(name, precision, tf32, peak):
    assert peak_tflops(name, precision, tf32=tf32) == peak


@pytest.mark.parametrize("name", [
    "NVIDIA L40",  # contains "L4"
    "NVIDIA H100 NVL",  # contains "H100"; the NVL board's peaks are not the SXM board's
    "NVIDIA H200 NVL",
    "NVIDIA H100 80GB HBM3 MIG 1g.10gb",  # a MIG slice: a fraction of the whole GPU's SMs
    "NVIDIA A100-SXM4-40GB MIG 3g.20gb",
    "NVIDIA A10G",  # contains "A10"
    "Tesla V100-PCIE-16GB",  # contains "V100"; lower clocks than the SXM2 board
])
def test_a_name_that_only_contains_a_known_one_gets_no_peak(name):
    assert [peak_tflops(name, precision, tf32=True) for precision in ("bf16", "fp32")] == [None, None]
