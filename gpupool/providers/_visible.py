"""Which devices this process may use: ``CUDA_VISIBLE_DEVICES`` against NVML.

CUDA and NVML number GPUs differently. NVML counts in PCI bus order; CUDA,
unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, puts the fastest GPU first, and
counts only the devices its mask leaves visible. The one name both agree on
is the UUID, so this module resolves every entry of the mask to an NVML
device UUID and the pool works with UUIDs from then on.

Everything here is pure: the NVML provider enumerates the devices, then
:func:`select_devices` decides which of them the process may use.

Rules (mirroring CUDA where CUDA has a rule, stricter where CUDA silently
ignores input):

* unset: every device; empty (or blank): no device.
* ``0,1``: physical GPUs by CUDA index. Under ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
  that is PCI bus order. Under CUDA's default (fastest first) the order is
  only known when every GPU is the same model (then it is PCI bus order too)
  or when the mask names every GPU (then the order does not matter);
  otherwise :class:`VisibleDevicesError` says how to be unambiguous.
* ``GPU-8a3f...``: a GPU by UUID or by a unique prefix of it, as CUDA accepts.
* ``MIG-...``: a MIG instance by UUID or unique prefix.
* A negative index ends the list, as in CUDA (``-1`` hides every GPU).
* Anything else, an index out of range, an unknown or ambiguous UUID, or a
  device named twice is an error rather than CUDA's silent truncation: the
  pool must never manage a GPU the process was not given.

A GPU in MIG mode is not poolable itself; its MIG instances are. Naming the
GPU (by index or UUID) selects all of its instances.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

__all__ = [
    "DeviceIdentity",
    "VisibleDevicesError",
    "parse_visible_devices",
    "select_devices",
]

_INDEX = re.compile(r"[0-9]+")
_NEGATIVE = re.compile(r"-[0-9]+")
_UUID = re.compile(r"(GPU|MIG)-[0-9a-f][0-9a-f-]*", re.IGNORECASE)
_LEGACY_MIG = re.compile(r"MIG-GPU-.*/[0-9]+/[0-9]+")


class VisibleDevicesError(ValueError):
    """``CUDA_VISIBLE_DEVICES`` is malformed or names devices this machine lacks."""


@attrs.frozen
class DeviceIdentity:
    """A device the pool can hand out: a whole GPU, or one MIG instance."""

    #: The pool's index: position among all poolable devices of the machine,
    #: in NVML order, MIG instances in place of their GPU. Equals the NVML
    #: (and ``nvidia-smi``) index on machines without MIG.
    index: int
    uuid: str
    name: str
    #: NVML index of the physical GPU (the parent, for a MIG instance).
    nvml_index: int
    #: PCI bus id of the physical GPU, ``None`` where NVML could not say.
    pci_bus_id: str | None = None
    #: Model name of the physical GPU (CUDA's speed order depends on it).
    model: str = ""
    #: UUID of the physical GPU, for a MIG instance; ``None`` for a whole GPU.
    parent_uuid: str | None = None


def parse_visible_devices(value: str | None) -> tuple[int | str, ...] | None:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` value, ``None`` when unset.

    Integers are CUDA indices; strings are upper-cased ``GPU-``/``MIG-``
    prefixes with lower-cased hex (how NVML spells UUIDs). Raises
    :class:`VisibleDevicesError` naming the bad entry.

    >>> parse_visible_devices("1, GPU-8A3F")
    (1, 'GPU-8a3f')
    >>> parse_visible_devices("")
    ()
    """
    if value is None:
        return None
    if not value.strip():
        return ()
    entries: list[int | str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if _INDEX.fullmatch(entry):
            entries.append(int(entry))
        elif _NEGATIVE.fullmatch(entry):
            break  # CUDA stops at the first negative index.
        elif _UUID.fullmatch(entry):
            entries.append(entry[:4].upper() + entry[4:].lower())
        elif _LEGACY_MIG.fullmatch(entry):
            raise VisibleDevicesError(
                f"CUDA_VISIBLE_DEVICES entry {entry!r} uses the MIG-GPU-<uuid>/<gi>/<ci> form "
                "of drivers before R470; use the instance's MIG-<uuid> from `nvidia-smi -L`"
            )
        else:
            what = "an empty entry" if not entry else f"entry {entry!r}"
            raise VisibleDevicesError(
                f"CUDA_VISIBLE_DEVICES={value!r} has {what}; each entry must be a device "
                "index (0, 1, ...), a GPU UUID or unique prefix (GPU-...), or a MIG UUID "
                "(MIG-...); `nvidia-smi -L` lists the UUIDs"
            )
    return tuple(entries)


def select_devices(
    entries: tuple[int | str, ...] | None,
    devices: Sequence[DeviceIdentity],
    *,
    device_order: str | None = None,
) -> list[DeviceIdentity]:
    """The ``devices`` that ``entries`` (from :func:`parse_visible_devices`) allow.

    ``device_order`` is the process's ``CUDA_DEVICE_ORDER``. The result is in
    pool index order, whatever order the mask listed them in.
    """
    if entries is None:
        return sorted(devices, key=lambda d: d.index)
    chosen: dict[int, DeviceIdentity] = {}
    for entry in entries:
        if isinstance(entry, int):
            group = _by_cuda_index(entry, entries, devices, device_order)
        else:
            group = _by_uuid(entry, devices)
        for device in group:
            if device.index in chosen:
                raise VisibleDevicesError(
                    f"CUDA_VISIBLE_DEVICES names device {device.uuid} more than once "
                    f"(entry {entry!r})"
                )
            chosen[device.index] = device
    return [chosen[i] for i in sorted(chosen)]


def _physical_gpus(devices: Sequence[DeviceIdentity]) -> list[list[DeviceIdentity]]:
    """Devices grouped by physical GPU (a MIG GPU's instances form one group)."""
    groups: dict[int, list[DeviceIdentity]] = {}
    for device in devices:
        groups.setdefault(device.nvml_index, []).append(device)
    return list(groups.values())


def _by_cuda_index(
    index: int,
    entries: tuple[int | str, ...],
    devices: Sequence[DeviceIdentity],
    device_order: str | None,
) -> list[DeviceIdentity]:
    gpus = _physical_gpus(devices)
    if index >= len(gpus):
        raise VisibleDevicesError(
            f"CUDA_VISIBLE_DEVICES names device index {index}, but NVML sees "
            f"{len(gpus)} GPU(s) (indices 0 to {len(gpus) - 1})"
        )
    # PCI bus order, taken from the bus ids rather than assumed from NVML's numbering.
    gpus.sort(key=lambda group: (group[0].pci_bus_id or "", group[0].nvml_index))
    if (device_order or "").strip().upper() != "PCI_BUS_ID":
        models = {group[0].model for group in gpus}
        indices = {e for e in entries if isinstance(e, int)}
        if len(models) > 1 and indices != set(range(len(gpus))):
            raise VisibleDevicesError(
                f"CUDA_VISIBLE_DEVICES uses device indices, and this machine mixes GPU models "
                f"({', '.join(sorted(models))}), so which GPU CUDA calls {index} depends on "
                "CUDA's speed ranking; set CUDA_DEVICE_ORDER=PCI_BUS_ID, or name the GPUs "
                "by UUID (`nvidia-smi -L` lists them)"
            )
    return sorted(gpus[index], key=lambda d: d.index)


def _by_uuid(prefix: str, devices: Sequence[DeviceIdentity]) -> list[DeviceIdentity]:
    # A GPU UUID may name a whole GPU, or a GPU in MIG mode (then: all its instances).
    matches: dict[str, list[DeviceIdentity]] = {}
    for device in devices:
        for uuid in (device.uuid, device.parent_uuid):
            if uuid is not None and uuid.lower().startswith(prefix.lower()):
                matches.setdefault(uuid, []).append(device)
    if not matches:
        known = sorted({d.parent_uuid or d.uuid for d in devices} | {d.uuid for d in devices})
        raise VisibleDevicesError(
            f"CUDA_VISIBLE_DEVICES names {prefix!r}, which matches no device; "
            f"this machine has {', '.join(known) or 'no devices'}"
        )
    if len(matches) > 1:
        raise VisibleDevicesError(
            f"CUDA_VISIBLE_DEVICES entry {prefix!r} is ambiguous: it is a prefix of "
            f"{', '.join(sorted(matches))}; give more of the UUID"
        )
    (group,) = matches.values()
    return sorted(group, key=lambda d: d.index)
