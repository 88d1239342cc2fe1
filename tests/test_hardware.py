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
