"""Device profiles against our server (both devices, real processes): every page the device
writes through the checker's mapping is reported dirty afterwards."""

from __future__ import annotations

import sys

import pytest

from vfio_user_mig import wire
from vfio_user_mig.check.profiles import ProfileError, get_profile, profile_names
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.steps import Expect
from vfio_user_mig.check.target import SpawnTarget

SERVE = f"{sys.executable} -m vfio_user_mig.cli serve --socket {{socket}}"


def test_lookup() -> None:
    assert profile_names() == ["lvu-sample", "migdev"]
    assert get_profile("migdev").name == "migdev"
    with pytest.raises(ProfileError):
        get_profile("nope")


@pytest.mark.parametrize("device", ["migdev", "lvu-sample"])
def test_written_pages_are_dirty(device: str) -> None:
    profile = get_profile(device)
    target = SpawnTarget(f"{SERVE} --device {device}")
    checker = Checker(target, profile=profile)
    dirty: set[int] = set()
    written: set[int] = set()
    with checker.sequence("profile", device) as seq:
        profile.prepare(seq)
        seq.check("logging on", wire.encode(wire.DeviceFeature(
            feature=wire.FeatureIndex.DMA_LOGGING_START, ops=wire.FeatureOp.SET,
            data=wire.DmaLoggingControl(4096), msg_id=seq.next_id())), Expect("ok"))
        written = profile.stimulate(seq)
        for iova, size, with_fd in profile.dma_maps:
            if not with_fd:
                continue
            reply = seq.check("report", wire.encode(wire.DeviceFeature(
                feature=wire.FeatureIndex.DMA_LOGGING_REPORT, ops=wire.FeatureOp.GET,
                data=wire.DmaLoggingReport(iova, size, 4096), msg_id=seq.next_id())),
                Expect("ok"))
            assert reply is not None
            bitmap = wire.DirtyBitmap(iova, size, 4096, reply.payload[32:])
            dirty |= {iova + p * 4096 for p in bitmap.pages()}
    target.close()
    assert checker.report.findings == []
    assert written and {w // 4096 * 4096 for w in written} <= dirty  # any address in a page
