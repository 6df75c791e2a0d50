import pytest

from fleet.models import GpuSku
from fleet.skus import SKUS, ensure_skus, is_non_gpu_accelerator, resolve_sku


@pytest.mark.parametrize(
    "name",
    ["H100", "NVIDIA H100", "H100-80GB", "H100-SXM", "NVIDIA-H100-80GB-HBM3", "H100-80G-PCIe", "h100"],
)
def test_h100_aliases_resolve_to_h100(name):
    assert resolve_sku(name) == "H100"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("A100-80G-PCIe", "A100-80GB"),
        ("A100-80GB", "A100-80GB"),
        ("A100", "A100"),
        ("NVIDIA A10G", "A10G"),
        ("A10", "A10"),
        ("NVIDIA T4 Tensor Core", "T4"),
        ("NVIDIA L40S", "L40S"),
        ("RTXA6000", "A6000"),
        ("RTX-6000-Ada", "RTX6000-Ada"),
        ("V100-32GB", "V100-32GB"),
        ("MI300X", "MI300X"),
    ],
)
def test_catalog_names_resolve_to_canonical_sku(name, expected):
    assert resolve_sku(name) == expected


def test_a100_with_80_gib_memory():
    assert resolve_sku("NVIDIA A100", memory_gib_per_gpu=80) == "A100-80GB"


def test_a100_with_40_gib_memory():
    assert resolve_sku("NVIDIA A100", memory_gib_per_gpu=40) == "A100"


@pytest.mark.parametrize(
    "name", ["tpu-v5p-8", "AWS Inferentia2", "AWS Trainium", "Qualcomm AI 100 Accelerators", "GAUDI2"]
)
def test_non_gpu_accelerators_resolve_to_none(name):
    assert resolve_sku(name) is None
    assert is_non_gpu_accelerator(name)


def test_unknown_gpu_resolves_to_none():
    assert resolve_sku("Voodoo5 6000") is None


def test_unknown_gpu_is_not_flagged_as_non_gpu():
    assert not is_non_gpu_accelerator("Voodoo5 6000")


def test_sku_table_names_resolve_to_themselves():
    for spec in SKUS:
        assert resolve_sku(spec.name) == spec.name, spec.name


@pytest.mark.django_db
def test_ensure_skus_creates_every_table_entry():
    ensure_skus()

    assert GpuSku.objects.count() == len(SKUS)
    assert GpuSku.objects.get(name="H200").memory_gib == 141


@pytest.mark.django_db
def test_ensure_skus_twice_changes_nothing():
    ensure_skus()
    before = list(GpuSku.objects.values_list("pk", "name", "memory_gib", "aliases"))

    ensure_skus()

    assert list(GpuSku.objects.values_list("pk", "name", "memory_gib", "aliases")) == before


@pytest.mark.django_db
def test_ensure_skus_keeps_aliases_an_operator_added():
    GpuSku.objects.create(name="H100", memory_gib=80, aliases=["our-h100"])

    ensure_skus()

    aliases = GpuSku.objects.get(name="H100").aliases
    assert "our-h100" in aliases
    assert "NVIDIA H100" in aliases
