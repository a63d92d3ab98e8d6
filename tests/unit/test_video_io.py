"""Video I/O of the stream client and the phantom videos: real encodes and decodes through PyAV."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from clients.video import MaskWriter, encode_frame, latency_summary, open_video
from export.phantoms.polyp import make_polyp_clip
from export.phantoms.surgical import make_surgical_frame
from export.phantoms.video import polyp_video, surgical_clip, surgical_video, write_mp4


def _decode_all(path: Path) -> tuple[np.ndarray, float, int]:
    """Frames, fps and container frame count, read with PyAV directly (not through open_video)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        return frames, float(stream.average_rate), stream.frames


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


def test_polyp_video_reads_back_with_its_count_size_fps_and_pixels(tmp_path: Path) -> None:
    path, masks = polyp_video(3, 10, (240, 320), tmp_path / "polyp.mp4", fps=25)
    source = make_polyp_clip(np.random.default_rng(3), frames=10, shape=(240, 320))
    np.testing.assert_array_equal(masks, source.masks)
    assert masks.shape == (10, 240, 320) and masks.any()
    video = open_video(path)
    assert (video.fps, video.frame_count, video.size, video.codec) == (25.0, 10, (240, 320), "h264")
    frames = np.stack(list(video))
    assert frames.shape == source.frames.shape and frames.dtype == np.uint8
    diff = _abs_diff(frames, source.frames)
    assert diff.mean() < 1.0 and diff.max() <= 4  # yuv444p crf 0: only the colour-conversion rounding
    # every decoded frame is closest to its own source frame (order kept, nothing dropped or repeated)
    errors = np.array([[_abs_diff(f, s).mean() for s in source.frames] for f in frames])
    np.testing.assert_array_equal(errors.argmin(axis=1), np.arange(10))


def test_surgical_pan_video_moves_smoothly_and_reads_back(tmp_path: Path) -> None:
    path, labels = surgical_video(5, 12, (256, 320), tmp_path / "surgical.mkv", fps=30000 / 1001)  # NTSC
    rgb, truth = surgical_clip(5, 12, (256, 320))
    np.testing.assert_array_equal(labels, truth)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) - {0} and labels.max() <= 7
    assert all((frame > 0).any() for frame in labels)
    assert not np.array_equal(labels[0], labels[-1])  # the instruments move in the frame
    for before, after in zip(labels[:-1], labels[1:]):  # by at most 2 px between frames: a pan
        assert any(
            np.array_equal(np.roll(before, (dy, dx), axis=(0, 1))[4:-4, 4:-4], after[4:-4, 4:-4])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )
    with open_video(path) as video:
        assert abs(video.fps - 30000 / 1001) < 1e-9
        assert video.size == (256, 320)
        assert video.frame_count is None  # Matroska does not store a frame count
        frames = np.stack(list(video))
    assert frames.shape == rgb.shape
    diff = _abs_diff(frames, rgb)
    assert diff.mean() < 1.0 and diff.max() <= 4


def test_independent_surgical_frames_are_make_surgical_frame_draws() -> None:
    rgb, labels = surgical_clip(8, 3, (128, 160), motion="independent")
    rng = np.random.default_rng(8)
    for t in range(3):
        frame = make_surgical_frame(rng, (128, 160))
        np.testing.assert_array_equal(rgb[t], frame.rgb)
        np.testing.assert_array_equal(labels[t], frame.labels)
    with pytest.raises(ValueError, match="motion"):
        surgical_clip(8, 3, (128, 160), motion="zoom")


def test_write_mp4_rgb_codec_is_exact_and_yuv420p_refuses_odd_sizes(tmp_path: Path) -> None:
    frames = make_polyp_clip(np.random.default_rng(1), frames=4, shape=(96, 128)).frames
    decoded, fps, count = _decode_all(write_mp4(frames, tmp_path / "exact.mp4", fps=12, codec="libx264rgb"))
    np.testing.assert_array_equal(decoded, frames)
    assert (fps, count) == (12.0, 4)
    decoded, _, _ = _decode_all(write_mp4(frames, tmp_path / "small.mp4", pix_fmt="yuv420p"))
    assert decoded.shape == frames.shape and _abs_diff(decoded, frames).mean() < 6
    with pytest.raises(ValueError, match="even"):
        write_mp4(frames[:, :95], tmp_path / "odd.mp4", pix_fmt="yuv420p")
    decoded, _, _ = _decode_all(write_mp4(frames[:, :95, :127], tmp_path / "odd444.mp4"))
    assert decoded.shape == (4, 95, 127, 3)
    with pytest.raises(ValueError, match="no frames"):
        write_mp4([], tmp_path / "empty.mp4")


def test_open_video_iterates_again_from_the_start(tmp_path: Path) -> None:
    frames = make_polyp_clip(np.random.default_rng(2), frames=3, shape=(64, 96)).frames
    video = open_video(write_mp4(frames, tmp_path / "again.mp4"))
    first = [next(iter(video))]  # a half-read pass
    second = list(video)
    assert len(second) == 3
    np.testing.assert_array_equal(first[0], second[0])
    video.close()


def test_encode_frame_round_trips_through_pillow() -> None:
    rgb = make_polyp_clip(np.random.default_rng(4), frames=1, shape=(120, 160)).frames[0]
    png = encode_frame(rgb, "png")
    assert png.startswith(b"\x89PNG")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), rgb)
    jpeg = encode_frame(rgb, "jpeg", quality=90)
    assert jpeg.startswith(b"\xff\xd8")
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert decoded.shape == rgb.shape and _abs_diff(decoded, rgb).mean() < 4
    assert len(encode_frame(rgb, "jpeg", quality=30)) < len(jpeg)
    with pytest.raises(ValueError, match="fmt"):
        encode_frame(rgb, "gif")
    with pytest.raises(ValueError, match="uint8"):
        encode_frame(rgb.astype(np.float32), "png")


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".avi", ".webm"])
def test_mask_writer_video_keeps_frame_count_size_and_fps(tmp_path: Path, suffix: str) -> None:
    rgb, labels = surgical_clip(6, 8, (128, 160))
    out = tmp_path / f"overlay{suffix}"
    red = {label: (255, 0, 0) for label in range(1, 8)}
    with MaskWriter(out, fps=15, colours=red) as writer:
        for i in range(8):
            writer.write(i, rgb[i], None if i in (2, 5) else labels[i])  # 2 and 5: dropped frames
    assert writer.written == 8
    decoded, fps, _ = _decode_all(out)
    assert decoded.shape == rgb.shape and fps == 15.0
    video = open_video(out)
    assert video.size == (128, 160) and video.fps == 15.0
    video.close()
    assert (labels[0] > 0).any() and (labels[2] > 0).any()
    for i in (0, 2):  # frame 0 has the overlay on its instruments, dropped frame 2 is plain
        redness = decoded[i, ..., 0].astype(float) - decoded[i, ..., 1:].mean(axis=-1)
        source_redness = rgb[i, ..., 0].astype(float) - rgb[i, ..., 1:].mean(axis=-1)
        gain = (redness - source_redness)[labels[i] > 0].mean()
        assert gain > 40 if i == 0 else abs(gain) < 10


def test_mask_writer_video_takes_frames_in_order_and_odd_sizes(tmp_path: Path) -> None:
    rgb, labels = surgical_clip(7, 3, (128, 160))
    with MaskWriter(tmp_path / "odd.mp4", fps=10) as writer:
        writer.write(0, rgb[0, :127, :159], labels[0, :127, :159])
        with pytest.raises(ValueError, match="in order"):
            writer.write(2, rgb[2, :127, :159], None)
        with pytest.raises(ValueError, match="match"):
            writer.write(1, rgb[1, :127, :159], labels[1])
        writer.write(1, rgb[1, :127, :159], None)
    decoded, _, count = _decode_all(tmp_path / "odd.mp4")
    assert decoded.shape == (2, 127, 159, 3) and count == 2


def test_mask_writer_directory_writes_label_pngs_for_answered_frames(tmp_path: Path) -> None:
    rgb, labels = surgical_clip(9, 4, (96, 128), motion="independent")
    labels[1, :8, :8] = np.arange(64, dtype=np.uint8).reshape(8, 8)  # ids beyond the phantom's 0-7
    out = tmp_path / "masks"
    writer = MaskWriter(out)
    for i in range(4):
        writer.write(i, rgb[i], None if i == 2 else labels[i].astype(np.int64))
    writer.close()
    assert sorted(p.name for p in out.iterdir()) == ["frame_000000.png", "frame_000001.png", "frame_000003.png"]
    assert writer.written == 3
    for i in (0, 1, 3):
        image = Image.open(out / f"frame_{i:06d}.png")
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), labels[i])
    with pytest.raises(ValueError, match="closed"):
        writer.write(4, rgb[0], labels[0])


def test_latency_summary_figures() -> None:
    summary = latency_summary([float(v) for v in range(10, 101, 10)])  # 10, 20, ..., 100
    assert summary == {"count": 10, "mean": 55.0, "p50": 55.0, "p95": pytest.approx(95.5), "max": 100.0}
    assert latency_summary([7.0])["p95"] == 7.0
    assert latency_summary([]) == {"count": 0, "mean": None, "p50": None, "p95": None, "max": None}
