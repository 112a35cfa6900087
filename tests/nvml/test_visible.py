"""CUDA_VISIBLE_DEVICES parsing and its mapping onto NVML devices (pure, no NVML)."""

from __future__ import annotations

import pytest

from gpupool.providers._visible import (
    DeviceIdentity,
    VisibleDevicesError,
    parse_visible_devices,
    select_devices,
)

A = "GPU-8a3f0000-1111-2222-3333-444444444444"
B = "GPU-8b000000-1111-2222-3333-444444444444"
C = "GPU-c0000000-1111-2222-3333-444444444444"
MIG1 = "MIG-11110000-aaaa-bbbb-cccc-dddddddddddd"
MIG2 = "MIG-22220000-aaaa-bbbb-cccc-dddddddddddd"


def whole(index: int, uuid: str, bus: str, model: str = "A100") -> DeviceIdentity:
    return DeviceIdentity(index, uuid, model, index, f"00000000:{bus}:00.0", model)


# NVML numbers GPUs 0, 1, 2 but their bus ids put GPU 2 first: a machine where
# NVML's enumeration and PCI bus order disagree must still be mapped by bus id.
MACHINE = [whole(0, A, "3B"), whole(1, B, "5E"), whole(2, C, "1A")]


def indices(devices: list[DeviceIdentity]) -> list[int]:
    return [d.index for d in devices]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", ()),
        ("   ", ()),
        ("0", (0,)),
        ("2, 0", (2, 0)),
        ("GPU-8A3F", ("GPU-8a3f",)),
        ("gpu-8a3f", ("GPU-8a3f",)),
        (A, (A,)),
        (MIG1, (MIG1,)),
        ("0,-1,1", (0,)),
        ("-1", ()),
        ("1,-1,junk", (1,)),
    ],
)
def test_parse(value: str | None, expected: tuple[int | str, ...] | None) -> None:
    assert parse_visible_devices(value) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("0,,1", "an empty entry"),
        ("0,", "an empty entry"),
        ("cuda:0", "entry 'cuda:0'"),
        ("1.5", "entry '1.5'"),
        ("GPU-", "entry 'GPU-'"),
        ("GPU-xyz", "entry 'GPU-xyz'"),
        ("8a3f0000", "entry '8a3f0000'"),
    ],
)
def test_parse_rejects_invalid_entries(value: str, fragment: str) -> None:
    with pytest.raises(VisibleDevicesError, match="CUDA_VISIBLE_DEVICES") as info:
        parse_visible_devices(value)
    assert fragment in str(info.value)
    assert "nvidia-smi -L" in str(info.value)


def test_parse_rejects_legacy_mig_form_naming_the_modern_one() -> None:
    with pytest.raises(VisibleDevicesError, match="MIG-<uuid>"):
        parse_visible_devices(f"MIG-{A}/1/0")


def test_unset_means_every_device_and_empty_means_none() -> None:
    assert indices(select_devices(None, MACHINE)) == [0, 1, 2]
    assert select_devices((), MACHINE) == []


def test_indices_follow_pci_bus_order_not_nvml_order() -> None:
    # CUDA index 0 is the GPU on the lowest bus (1A), which NVML calls 2;
    # CUDA index 2 is on the highest bus (5E), NVML's 1.
    chosen = select_devices((0, 2), MACHINE, device_order="PCI_BUS_ID")
    assert [d.uuid for d in chosen] == [B, C]  # in pool order, not mask order
    assert [d.uuid for d in select_devices((2,), MACHINE, device_order="PCI_BUS_ID")] == [B]


def test_same_model_makes_fastest_first_order_pci_order() -> None:
    assert [d.uuid for d in select_devices((0,), MACHINE)] == [C]


def test_mixed_models_with_indices_are_refused_unless_unambiguous() -> None:
    mixed = [whole(0, A, "3B", "A100"), whole(1, B, "5E", "T4"), whole(2, C, "1A", "A100")]
    with pytest.raises(VisibleDevicesError, match="CUDA_DEVICE_ORDER=PCI_BUS_ID"):
        select_devices((0,), mixed)
    # Naming every GPU leaves nothing to guess; so does PCI_BUS_ID order.
    assert indices(select_devices((1, 0, 2), mixed)) == [0, 1, 2]
    assert [d.uuid for d in select_devices((0,), mixed, device_order="PCI_BUS_ID")] == [C]


def test_uuids_and_unique_prefixes() -> None:
    assert [d.uuid for d in select_devices((B, "GPU-c"), MACHINE)] == [B, C]


def test_ambiguous_prefix_is_an_error_naming_the_candidates() -> None:
    with pytest.raises(VisibleDevicesError, match="ambiguous") as info:
        select_devices(("GPU-8",), MACHINE)
    assert A in str(info.value)
    assert B in str(info.value)


def test_unknown_uuid_is_an_error_listing_the_devices() -> None:
    with pytest.raises(VisibleDevicesError, match="matches no device") as info:
        select_devices(("GPU-ffff",), MACHINE)
    assert A in str(info.value)


def test_index_out_of_range() -> None:
    with pytest.raises(VisibleDevicesError, match="NVML sees 3 GPU"):
        select_devices((3,), MACHINE)


def test_device_named_twice_is_an_error() -> None:
    with pytest.raises(VisibleDevicesError, match="more than once"):
        select_devices((0, C), MACHINE, device_order="PCI_BUS_ID")


MIG_MACHINE = [
    whole(0, A, "3B"),
    DeviceIdentity(1, MIG1, "A100 MIG 3g.20gb", 1, "00000000:5E:00.0", "A100", B),
    DeviceIdentity(2, MIG2, "A100 MIG 3g.20gb", 1, "00000000:5E:00.0", "A100", B),
]


def test_mig_instance_by_uuid_and_prefix() -> None:
    assert [d.uuid for d in select_devices((MIG2,), MIG_MACHINE)] == [MIG2]
    assert [d.uuid for d in select_devices(("MIG-1111",), MIG_MACHINE)] == [MIG1]


def test_naming_a_mig_gpu_selects_all_its_instances() -> None:
    assert indices(select_devices((B,), MIG_MACHINE)) == [1, 2]
    assert indices(select_devices((1,), MIG_MACHINE)) == [1, 2]


def test_mig_instance_and_its_gpu_together_is_a_duplicate() -> None:
    with pytest.raises(VisibleDevicesError, match="more than once"):
        select_devices((MIG1, B), MIG_MACHINE)
