"""The GPU SKUs MCM schedules, and how catalog accelerator names map to them.

Memory sizes are the vendors' published per-GPU figures (marketing GB, as NVIDIA and AMD print
them: an H100 is "80 GB", an H200 "141 GB"). Aliases are the spellings used by SkyPilot-format
catalogs, the AWS price list (``GPU_model``) and Kubernetes GPU product labels.
"""

import re
from dataclasses import dataclass

from django.db import transaction

from fleet.models import GpuSku


@dataclass(frozen=True)
class SkuSpec:
    name: str
    memory_gib: int
    aliases: tuple[str, ...] = ()


SKUS: tuple[SkuSpec, ...] = (
    # NVIDIA data-centre GPUs, newest first.
    SkuSpec("B300", 288, ("B300-SXM", "NVIDIA B300", "NVIDIA-B300-SXM6-AC")),
    SkuSpec("GB200", 186, ("GB200-NVL72", "NVIDIA GB200")),
    SkuSpec("B200", 180, ("B200-SXM", "NVIDIA B200", "NVIDIA-B200")),
    SkuSpec("GH200", 96, ("NVIDIA GH200", "GH200-96GB")),
    SkuSpec("H200", 141, ("H200-SXM", "H200-141GB", "NVIDIA H200", "NVIDIA-H200")),
    SkuSpec(
        "H100",
        80,
        (
            "H100-80GB",
            "H100-SXM",
            "H100-SXM5",
            "H100-PCIE",
            "H100-MEGA",
            "H100-80G-SXM5",
            "H100-80G-PCIe",
            "H100-80G-PCIe-NVLink",
            "NVIDIA H100",
            "NVIDIA-H100-80GB-HBM3",
        ),
    ),
    SkuSpec("A100-80GB", 80, ("A100-80GB-SXM", "A100-80G-PCIe", "A100-80G-PCIe-NVLink", "NVIDIA-A100-SXM4-80GB")),
    SkuSpec("A100", 40, ("A100-40GB", "A100-SXM4-40GB", "NVIDIA A100", "NVIDIA-A100-SXM4-40GB")),
    SkuSpec("A800", 80, ("A800-80GB",)),
    SkuSpec("L40S", 48, ("NVIDIA L40S",)),
    SkuSpec("L40", 48, ("NVIDIA L40",)),
    SkuSpec("L4", 24, ("NVIDIA L4",)),
    SkuSpec("A10G", 24, ("NVIDIA A10G",)),
    SkuSpec("A10", 24, ("NVIDIA A10",)),
    SkuSpec("A16", 16, ("NVIDIA A16",)),
    SkuSpec("A40", 48, ("NVIDIA A40",)),
    SkuSpec("V100-32GB", 32, ("V100-SXM2-32GB",)),
    SkuSpec("V100", 16, ("Tesla V100", "NVIDIA Tesla V100", "V100-SXM2-16GB")),
    SkuSpec("T4", 16, ("Tesla T4", "NVIDIA T4 Tensor Core", "NVIDIA T4G Tensor Core", "T4G")),
    SkuSpec("P100", 16, ("Tesla P100",)),
    SkuSpec("P4", 8, ("Tesla P4",)),
    SkuSpec("K80", 12, ("Tesla K80", "NVIDIA Tesla K80")),
    SkuSpec("M60", 8, ("Tesla M60", "NVIDIA Tesla M60")),
    SkuSpec("K520", 4, ("NVIDIA GRID K520", "GRID K520")),
    # NVIDIA workstation and consumer GPUs that GPU clouds rent out.
    SkuSpec("RTXPRO6000", 96, ("RTX-PRO-6000", "RTXPro6000", "RTXPRO6000WS", "RTX PRO 6000 Blackwell")),
    SkuSpec("RTX6000-Ada", 48, ("RTX6000Ada", "RTX-6000-Ada", "RTX 6000 Ada")),
    SkuSpec("RTX5880-Ada", 48, ("RTX 5880 Ada",)),
    SkuSpec("RTX4000-Ada", 20, ("RTX 4000 Ada",)),
    SkuSpec("A6000", 48, ("RTXA6000", "RTX-A6000", "RTX A6000")),
    SkuSpec("A5000", 24, ("RTXA5000", "RTX-A5000", "RTX A5000")),
    SkuSpec("A4500", 20, ("RTXA4500", "RTX-A4500", "RTX A4500")),
    SkuSpec("A4000", 16, ("RTXA4000", "RTX-A4000", "RTX A4000")),
    SkuSpec("RTX6000", 24, ("Quadro RTX 6000",)),
    SkuSpec("P4000", 8, ("Quadro P4000",)),
    SkuSpec("M4000", 8, ("Quadro M4000",)),
    SkuSpec("RTX5090", 32, ("RTX 5090", "GeForce RTX 5090")),
    SkuSpec("RTX5070", 12, ("RTX 5070", "GeForce RTX 5070")),
    SkuSpec("RTX4090", 24, ("RTX 4090", "GeForce RTX 4090")),
    SkuSpec("RTX4070", 12, ("RTX 4070", "GeForce RTX 4070")),
    SkuSpec("RTX4060", 8, ("RTX 4060", "GeForce RTX 4060")),
    SkuSpec("RTX3090", 24, ("RTX 3090", "GeForce RTX 3090")),
    SkuSpec("RTX3060", 12, ("RTX 3060", "GeForce RTX 3060")),
    # AMD.
    SkuSpec("MI300X", 192, ("AMD MI300X", "AMD Instinct MI300X")),
    SkuSpec("MI25", 16, ("AMD Radeon Instinct MI25", "Radeon Instinct MI25")),
    SkuSpec("V520", 8, ("AMD Radeon Pro V520", "Radeon Pro V520")),
)

# Accelerators that are not GPUs: MCM places GPU workloads only, so catalog rows selling these
# are rejected with NOT_A_GPU_REASON instead of "unknown accelerator".
_NON_GPU_PATTERN = re.compile(r"tpu|inferentia|trainium|qualcomm|gaudi|habana|\bai 100\b", re.IGNORECASE)
NOT_A_GPU_REASON = "not a GPU SKU MCM schedules"

# Vendor and product-line words that catalogs add in front of or behind the model name.
_NOISE_PATTERN = re.compile(r"\b(nvidia|amd|tesla|geforce|tensor core|instinct)\b", re.IGNORECASE)


def _normalize(name: str) -> str:
    """Reduce a name to upper-case letters and digits, without vendor words, for lookups."""
    without_noise = _NOISE_PATTERN.sub(" ", name)
    return re.sub(r"[^A-Z0-9]", "", without_noise.upper())


def _build_lookup() -> dict[str, str]:
    lookup: dict[str, str] = {}
    for spec in SKUS:
        for spelling in (spec.name, *spec.aliases):
            key = _normalize(spelling)
            if lookup.get(key, spec.name) != spec.name:
                raise ValueError(f"SKU alias {spelling!r} maps to both {lookup[key]} and {spec.name}")
            lookup[key] = spec.name
    return lookup


_LOOKUP = _build_lookup()
_SPEC_BY_NAME = {spec.name: spec for spec in SKUS}

# Names whose larger-memory variant is identified by the per-GPU memory alone. AWS names both
# A100 variants "NVIDIA A100" and gives the memory in another column.
_LARGER_VARIANTS = {"A100": ("A100-80GB", 80), "V100": ("V100-32GB", 32)}


def is_non_gpu_accelerator(name: str) -> bool:
    """Return whether a catalog accelerator name is a TPU, Inferentia, Trainium or similar."""
    return bool(_NON_GPU_PATTERN.search(name))


def resolve_sku(name: str, memory_gib_per_gpu: float | None = None) -> str | None:
    """Map a catalog accelerator name to a canonical SKU name, or None when MCM does not know it.

    ``memory_gib_per_gpu``, when a catalog gives it, picks the 80 GB A100 or the 32 GB V100 for
    names that do not say which variant they are. Non-GPU accelerators always return None.
    """
    if not name or not name.strip() or is_non_gpu_accelerator(name):
        return None
    canonical = _LOOKUP.get(_normalize(name))
    if canonical in _LARGER_VARIANTS and memory_gib_per_gpu is not None:
        larger_name, larger_memory = _LARGER_VARIANTS[canonical]
        if memory_gib_per_gpu >= larger_memory:
            return larger_name
    return canonical


def sku_spec(name: str) -> SkuSpec:
    """Return the table entry of a canonical SKU name; raises KeyError for other names."""
    return _SPEC_BY_NAME[name]


@transaction.atomic
def ensure_skus() -> dict[str, GpuSku]:
    """Create or update a GpuSku row per table entry; return all rows by canonical name.

    Rows whose memory and aliases already match are not written, so calling it again is free.
    Aliases an operator added to a row are kept.
    """
    existing = {sku.name: sku for sku in GpuSku.objects.all()}
    for spec in SKUS:
        sku = existing.get(spec.name)
        if sku is None:
            existing[spec.name] = GpuSku.objects.create(
                name=spec.name, memory_gib=spec.memory_gib, aliases=list(spec.aliases)
            )
            continue
        aliases = list(sku.aliases) + [alias for alias in spec.aliases if alias not in sku.aliases]
        if sku.memory_gib != spec.memory_gib or aliases != sku.aliases:
            sku.memory_gib, sku.aliases = spec.memory_gib, aliases
            sku.save(update_fields=["memory_gib", "aliases"])
    return existing


# Values of the ``nvidia.com/gpu.product`` node label, as NVIDIA GPU Feature Discovery sets them:
# the NVML product name with spaces replaced by hyphens. One label per SKU, used as the node
# selector when MCM creates a Deployment; SKUs missing here have no known label.
GPU_PRODUCT_LABELS: dict[str, str] = {
    "B300": "NVIDIA-B300-SXM6-AC",
    "B200": "NVIDIA-B200",
    "GH200": "NVIDIA-GH200-480GB",
    "H200": "NVIDIA-H200",
    "H100": "NVIDIA-H100-80GB-HBM3",
    "A100-80GB": "NVIDIA-A100-SXM4-80GB",
    "A100": "NVIDIA-A100-SXM4-40GB",
    "L40S": "NVIDIA-L40S",
    "L40": "NVIDIA-L40",
    "L4": "NVIDIA-L4",
    "A10G": "NVIDIA-A10G",
    "A10": "NVIDIA-A10",
    "V100-32GB": "Tesla-V100-SXM2-32GB",
    "V100": "Tesla-V100-SXM2-16GB",
    "T4": "Tesla-T4",
    "A40": "NVIDIA-A40",
    "A6000": "NVIDIA-RTX-A6000",
    "RTX4090": "NVIDIA-GeForce-RTX-4090",
    "RTX5090": "NVIDIA-GeForce-RTX-5090",
    "RTX3090": "NVIDIA-GeForce-RTX-3090",
    "P100": "Tesla-P100-PCIE-16GB",
}
# SKUs without an entry above get "NVIDIA-<SKU>", the shape GPU Feature Discovery gives most
# data-centre GPUs (the product name with spaces turned into hyphens).
# NOTE: AMD GPUs (MI300X, ...) are advertised as amd.com/gpu with other labels; MCM does not
# schedule them on Kubernetes yet, so their derived label matches no real node.
_DERIVED_PREFIX = "NVIDIA-"
_SKU_BY_GPU_PRODUCT = {label: sku for sku, label in GPU_PRODUCT_LABELS.items()}

# GPU Feature Discovery appends this to the product label when GPUs are shared by time-slicing or MPS.
_SHARED_SUFFIX = "-SHARED"


def sku_for_gpu_product(label: str) -> str | None:
    """Map a ``nvidia.com/gpu.product`` node label to a canonical SKU name, or None when unknown.

    Labels in GPU_PRODUCT_LABELS match exactly; other labels, such as "NVIDIA-H100-PCIe", go
    through the catalog aliases of ``resolve_sku``. A trailing "-SHARED" is ignored.
    """
    if label.endswith(_SHARED_SUFFIX):
        label = label.removesuffix(_SHARED_SUFFIX)
    known = _SKU_BY_GPU_PRODUCT.get(label) or resolve_sku(label)
    if known is None and label.startswith(_DERIVED_PREFIX):
        known = resolve_sku(label.removeprefix(_DERIVED_PREFIX))
    return known


def gpu_product_for_sku(sku: str) -> str | None:
    """Return the ``nvidia.com/gpu.product`` label of a canonical SKU name, or None when unknown."""
    if sku in GPU_PRODUCT_LABELS:
        return GPU_PRODUCT_LABELS[sku]
    return f"{_DERIVED_PREFIX}{sku}" if resolve_sku(sku) == sku else None
