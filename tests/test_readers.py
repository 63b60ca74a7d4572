"""Media readers and frame sampling, on real files written by tests/videos.py (no mocks).

Every video reader that loads here runs every test; one that does not (decord on aarch64,
torchcodec without FFmpeg's shared libraries) is skipped with the reason.
"""

import sys

import pytest
import torch

import videos
from ppllava.data import readers
from ppllava.data.errors import DataError, UnreadableSample
from ppllava.data.readers import (READERS, VIDEO_READERS, FrameFolderReader, ReaderUnavailable, available_readers,
                                  get_reader, read_image)
from ppllava.data.sampling import frame_window, read_clip, sample_indices

FRAMES, SIZE, FPS = 40, (48, 64), 25


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Good and broken media, written once for the module."""
    pytest.importorskip("av", reason="tests/videos.py writes the test videos with PyAV")
    d = tmp_path_factory.mktemp("media")
    m = {
        "mp4": videos.write_video(d / "moov_last.mp4", FRAMES, SIZE, FPS, gop=8),
        "faststart": videos.write_video(d / "moov_first.mp4", FRAMES, SIZE, FPS, faststart=True, gop=8),
        "mkv": videos.write_video(d / "clip.mkv", FRAMES, SIZE, FPS, gop=8),   # stores no frame count
        "folder": videos.write_frames_folder(d / "frames", FRAMES, SIZE),
        "text": videos.write_text(d / "notes.mp4"),
        "empty": videos.write_empty(d / "empty.mp4"),
        "zero": videos.write_zero_frames(d / "zero_frames.mkv"),
        "audio": videos.write_audio_only(d / "audio_only.mp4"),
        "missing": d / "missing.mp4",
    }
    m["cut_mp4"] = videos.truncate(m["mp4"], d / "cut_moov_last.mp4", 0.6)
    m["cut_faststart"] = videos.truncate(m["faststart"], d / "cut_moov_first.mp4", 0.6)
    # Cut between two packets, keeping 3: without the size check, decord and torchcodec open this and
    # return frame 4 as frame 2 (the B-frames shown before it come later in the file).
    third_packet_end = videos.packet_ends(m["faststart"])[2]
    m["cut_between_packets"] = videos.cut_at(m["faststart"], d / "cut_between.mp4", third_packet_end)
    m["cut_mkv"] = videos.truncate(m["mkv"], d / "cut.mkv", 0.6)
    return m


def _reader(name):
    if name not in available_readers():
        error = readers._import(READERS[name].module)[1]
        pytest.skip(f"reader {name!r} does not load here: {readers._one_line(error)}")
    return get_reader(name)


@pytest.fixture(params=VIDEO_READERS)
def reader(request):
    return _reader(request.param)


def indices_of(frames: torch.Tensor) -> list[int]:
    return [videos.frame_index(f) for f in frames]


# --- good videos ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mp4", "faststart", "mkv"])
def test_frame_count_and_rate(reader, media, kind):
    with reader.open(media[kind]) as clip:
        assert clip.num_frames == FRAMES
        assert clip.fps == pytest.approx(FPS)


@pytest.mark.parametrize("kind", ["mp4", "mkv"])
def test_frames_at_indices(reader, media, kind):
    wanted = [0, 3, 3, 8, 17, 38, 39, 39]            # repeats, a keyframe (8), the last frame
    with reader.open(media[kind]) as clip:
        frames = clip.read(wanted)
    assert frames.dtype == torch.uint8 and frames.shape == (len(wanted), *SIZE, 3)
    assert indices_of(frames) == wanted
    videos.assert_rgb(frames[0])


def test_any_order_and_successive_reads(reader, media):
    with reader.open(media["mp4"]) as clip:
        assert indices_of(clip.read([39, 0, 20, 0])) == [39, 0, 20, 0]
        assert indices_of(clip.read([10, 11])) == [10, 11]
        assert indices_of(clip.read([30])) == [30]     # continues forward
        assert indices_of(clip.read([2])) == [2]       # goes back


def test_readers_agree(media):
    usable = available_readers()
    if len(usable) < 2:
        pytest.skip(f"only {usable} load here: nothing to compare")
    wanted = list(range(FRAMES)) + [7, 7]
    decoded = {}
    for name in usable:
        with get_reader(name).open(media["mp4"]) as clip:
            decoded[name] = clip.read(wanted).int()
    first = usable[0]
    for name in usable[1:]:
        gap = (decoded[name] - decoded[first]).abs().max().item()
        assert gap <= 2, f"{name} differs from {first} by {gap} levels"


def test_pyav_uses_frame_threads_only_where_freeing_a_decoder_cannot_hang(media):
    """PyAV before 13 takes the GIL for every FFmpeg log line; a frame-threaded decoder freed mid-stream by the
    garbage collector then hung make test-av (PyAV 12.0.0, seen in gdb). Those versions get slice threads."""
    if "pyav" not in available_readers():
        pytest.skip("PyAV is not installed")
    import av

    with READERS["pyav"]().open(media["mp4"]) as clip:
        threading = clip._container.streams.video[0].thread_type
        frames = clip.read([0, 5])
    assert ("AUTO" in str(threading)) == (int(av.__version__.split(".")[0]) >= 13), (av.__version__, threading)
    with READERS["pyav"](threads=False).open(media["mp4"]) as clip:
        assert torch.equal(clip.read([0, 5]), frames)                   # the same frames either way


def test_frame_folder_natural_order(media):
    folder = media["folder"]
    (folder / "notes.txt").write_text("not a frame")
    with FrameFolderReader().open(folder) as clip:
        assert clip.num_frames == FRAMES and clip.fps is None
        frames = clip.read([0, 2, 10, 10, 39])
    assert indices_of(frames) == [0, 2, 10, 10, 39]    # frame_2.png before frame_10.png
    assert frames.dtype == torch.uint8 and frames.shape == (5, *SIZE, 3)
    videos.assert_rgb(frames[0], tolerance=0)
    with FrameFolderReader(fps=30).open(folder) as clip:
        assert clip.fps == 30


def test_tiff_frames_and_images_read_as_their_pngs(media, tmp_path):
    """TIFF is an image format like the others: a folder of .tif/.tiff frames and a .tif image read the pixels
    of the same frames saved as PNG (Pillow decodes both losslessly)."""
    from PIL import Image

    from ppllava.infer.pipeline import IMAGE_SUFFIXES

    tiffs = tmp_path / "tiffs"
    tiffs.mkdir()
    for i in range(6):                                          # frames 0-5, in both suffixes
        Image.open(media["folder"] / f"frame_{i}.png").save(tiffs / f"frame_{i}{'.tif' if i % 2 else '.tiff'}")
    with FrameFolderReader().open(tiffs) as clip, FrameFolderReader().open(media["folder"]) as folder:
        assert clip.num_frames == 6
        assert torch.equal(clip.read(list(range(6))), folder.read(list(range(6))))
    assert torch.equal(read_image(tiffs / "frame_1.tif"), read_image(media["folder"] / "frame_1.png"))
    assert ".tif" in IMAGE_SUFFIXES and ".tiff" in IMAGE_SUFFIXES          # Pipeline.read takes them as images


def test_frame_folder_matches_video(reader, media):
    with reader.open(media["mp4"]) as video, FrameFolderReader().open(media["folder"]) as folder:
        wanted = [1, 12, 25, 39]
        assert indices_of(video.read(wanted)) == indices_of(folder.read(wanted)) == wanted


# --- broken media: every problem is an UnreadableSample naming the file ---------------------------

BROKEN = ["missing", "empty", "text", "zero", "audio", "cut_mp4", "cut_faststart", "cut_between_packets", "cut_mkv"]


def _unreadable(path, open_and_read):
    with pytest.raises(UnreadableSample) as caught:
        open_and_read()
    error = caught.value
    assert error.path == str(path) and str(path) in str(error)
    assert "\n" not in str(error)
    return error


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_video(reader, media, kind):
    def open_and_read():
        with reader.open(media[kind]) as clip:
            clip.read(list(range(clip.num_frames)))
    _unreadable(media[kind], open_and_read)


@pytest.mark.parametrize("kind", ["cut_faststart", "cut_between_packets", "cut_mkv"])
def test_truncated_fails_at_open(reader, media, kind):
    error = _unreadable(media[kind], lambda: reader.open(media[kind]))
    assert "truncated" in error.reason


def test_index_out_of_range(reader, media):
    with reader.open(media["mp4"]) as clip:
        for bad in ([FRAMES], [0, FRAMES + 5], [-1]):
            _unreadable(media["mp4"], lambda: clip.read(bad))
        assert indices_of(clip.read([5])) == [5]        # the clip still reads after a refusal


def test_folder_given_to_video_reader(reader, media):
    _unreadable(media["folder"], lambda: reader.open(media["folder"]))


def test_broken_frame_folder(tmp_path):
    _unreadable(tmp_path / "nowhere", lambda: FrameFolderReader().open(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no frames" in _unreadable(empty, lambda: FrameFolderReader().open(empty)).reason
    broken = videos.write_frames_folder(tmp_path / "broken", 4, SIZE)
    videos.truncate(broken / "frame_2.png", broken / "frame_2.png", 0.5)
    with FrameFolderReader().open(broken) as clip:
        assert indices_of(clip.read([0, 1, 3])) == [0, 1, 3]
        error = _unreadable(broken, lambda: clip.read([1, 2]))
    assert "frame_2.png" in error.reason


# --- images -------------------------------------------------------------------------------------------

@pytest.fixture
def png(tmp_path):
    return videos.write_image(tmp_path / "image.png", 5, SIZE)


def test_read_image(png, tmp_path):
    image = read_image(png)
    assert image.dtype == torch.uint8 and image.shape == (1, *SIZE, 3)
    assert videos.frame_index(image[0]) == 5
    videos.assert_rgb(image[0], tolerance=0)
    from PIL import Image
    Image.open(png).convert("L").save(tmp_path / "grey.png")        # grey -> 3 channels
    assert read_image(tmp_path / "grey.png").shape == (1, *SIZE, 3)


def test_deep_images_are_not_clipped_to_white(png, tmp_path):
    """Pillow's convert("RGB") clips pixels above 255: a 16-bit grey PNG read so came out nearly all white. It reads
    as its 8-bit grey (v / 257); a float image beyond 0..255 is refused, one within it reads as before."""
    import numpy as np
    from PIL import Image
    grey = np.array(Image.open(png).convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    assert torch.equal(read_image(tmp_path / "deep.png")[0], torch.from_numpy(grey)[..., None].expand(*SIZE, 3))
    Image.fromarray(grey.astype(np.float32)).save(tmp_path / "float.tiff")
    assert torch.equal(read_image(tmp_path / "float.tiff"), read_image(tmp_path / "deep.png"))
    Image.fromarray(grey.astype(np.float32) * 4).save(tmp_path / "bright.tiff")
    error = _unreadable(tmp_path / "bright.tiff", lambda: read_image(tmp_path / "bright.tiff"))
    assert "F-mode image with pixels from 0.0 to 1020.0" in error.reason and "save it as an 8-bit image" in error.reason


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "cut"])
def test_broken_image(png, tmp_path, kind):
    path = {"missing": lambda: tmp_path / "none.png", "empty": lambda: videos.write_empty(tmp_path / "e.png"),
            "text": lambda: videos.write_text(tmp_path / "t.png"),
            "cut": lambda: videos.truncate(png, tmp_path / "cut.png", 0.5)}[kind]()
    _unreadable(path, lambda: read_image(path))


def test_broken_files_print_nothing_of_the_libraries_own(reader, media, capfd):
    """decord and FFmpeg print their own lines on fd 2 for a bad file: folded into our one error, not printed."""
    capfd.readouterr()
    error = _unreadable(media["text"], lambda: reader.open(media["text"]))
    assert capfd.readouterr().err == ""
    if reader.name == "decord":
        assert "Invalid data found when processing input" in error.reason     # what decord printed, in our line


def test_auto_falls_back_only_for_a_file_the_first_reader_cannot_read(media, tmp_path, caplog):
    """decord 0.6 cannot decode 48x48 H.264 (it opens it; its first read fails): auto reads it with pyav, frame for
    frame as pyav alone does, and says so. A file no reader can take for a reason they share (cut short) is not
    handed on: one error, no warning."""
    usable = available_readers()
    if usable[:2] != ["decord", "pyav"]:
        pytest.skip(f"needs decord and pyav, found {usable}")
    square = videos.write_video(tmp_path / "square.mp4", 12, (48, 48), FPS)
    with pytest.raises(UnreadableSample, match="decord cannot decode"):
        with get_reader("decord").open(square) as clip:
            clip.read([0])
    wanted = [0, 5, 11, 5]
    with get_reader("pyav").open(square) as clip:
        alone = clip.read(wanted)
    caplog.clear()
    with get_reader("auto").open(square) as clip:
        assert clip.num_frames == 12 and clip.reader == "decord"
        assert torch.equal(clip.read(wanted), alone) and clip.reader == "pyav"
        assert indices_of(clip.read([3])) == [3]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{square}: decord cannot decode frames 0..11: Check failed: from_size == to_size (9216 vs. 6912) "
        "DECORDArrayCopyFromTo: The size must exactly match; read with pyav"]
    with get_reader("auto").open(media["mp4"]) as clip:          # a file decord reads stays with decord
        assert clip.reader == "decord" and indices_of(clip.read([1, 39])) == [1, 39]
    caplog.clear()
    error = _unreadable(media["cut_faststart"], lambda: get_reader("auto").open(media["cut_faststart"]))
    assert "truncated" in error.reason and not [r for r in caplog.records if r.levelname == "WARNING"]
    error = _unreadable(media["text"], lambda: get_reader("auto").open(media["text"]))
    assert "decord cannot open it" in error.reason and "PyAV cannot open it" in error.reason


# --- choosing a reader ----------------------------------------------------------------------------------

def test_get_reader():
    usable = available_readers()
    assert set(usable) <= set(VIDEO_READERS)
    if len(usable) == 1:
        assert get_reader().name == get_reader("auto").name == usable[0]
    elif usable:
        assert get_reader().names == get_reader("auto").names == usable      # tried in this order
    assert isinstance(get_reader("frames"), FrameFolderReader)
    with pytest.raises(DataError, match="known: auto, decord, pyav, torchcodec, frames"):
        get_reader("opencv")


@pytest.mark.parametrize("name, hint", [("decord", "pip install decord"), ("pyav", "pip install av"),
                                        ("torchcodec", "pip install torchcodec")])
def test_missing_library(monkeypatch, name, hint):
    """A library that is not installed (None in sys.modules makes `import` fail as if it were absent)."""
    monkeypatch.setitem(sys.modules, READERS[name].module, None)
    readers._import.cache_clear()
    try:
        assert name not in available_readers()
        with pytest.raises(ReaderUnavailable, match=hint) as caught:
            get_reader(name)
        assert isinstance(caught.value, ImportError) and isinstance(caught.value, DataError)
        if name == "decord":
            assert "pyav" in str(caught.value)           # the aarch64 fallback
    finally:
        monkeypatch.undo()
        readers._import.cache_clear()


# --- sampling -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_frames, n, expected", [
    (10, 4, [1, 3, 6, 8]),             # centres 1.25 3.75 6.25 8.75
    (3, 6, [0, 0, 1, 1, 2, 2]),        # shorter than n: frames repeat in order
    (5, 5, [0, 1, 2, 3, 4]),
    (1, 3, [0, 0, 0]),
    (100, 1, [50]),
])
def test_sample_indices_eval(num_frames, n, expected):
    assert sample_indices(num_frames, n, train=False) == expected


def test_sample_indices_train_segments():
    segments = [{0, 1, 2}, {2, 3, 4}, {5, 6, 7}, {7, 8, 9}]      # [0, 2.5) [2.5, 5) [5, 7.5) [7.5, 10)
    seen = [set() for _ in segments]
    for seed in range(200):
        picked = sample_indices(10, 4, train=True, generator=torch.Generator().manual_seed(seed))
        assert picked == sample_indices(10, 4, train=True, generator=torch.Generator().manual_seed(seed))
        assert picked == sorted(picked)
        for i, index in enumerate(picked):
            assert index in segments[i]
            seen[i].add(index)
    assert seen == segments                                        # every frame of each segment comes up


def test_sample_indices_train_short_and_exact():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert sample_indices(3, 6, train=True, generator=g) == [0, 0, 1, 1, 2, 2]
        assert sample_indices(7, 7, train=True, generator=g) == list(range(7))


@pytest.mark.parametrize("num_frames, n", [(0, 4), (-1, 4), (10, 0), (10, -2), (10.0, 4), (10, True)])
def test_sample_indices_invalid(num_frames, n):
    with pytest.raises(ValueError):
        sample_indices(num_frames, n, train=False)


def test_frame_window():
    assert frame_window(100, 25.0) == (0, 100)
    assert frame_window(100, None) == (0, 100)
    assert frame_window(100, 25.0, 1.0, 2.0) == (25, 50)
    assert frame_window(100, 25.0, 1.01, 1.99) == (25, 50)       # frames overlapping the window
    assert frame_window(100, 25.0, start=2.0) == (50, 100)
    assert frame_window(100, 25.0, end=1.0) == (0, 25)
    assert frame_window(100, 25.0, 3.0, 60.0) == (75, 100)       # end clamped to the clip
    assert frame_window(100, 30.0, 0.1, 0.2) == (3, 6)           # 0.1 * 30 is 3.0000000000000004
    for args in [(100, None, 1.0, 2.0), (100, 25.0, 2.0, 2.0), (100, 25.0, 3.0, 1.0), (100, 25.0, 4.0, 5.0),
                 (100, 25.0, -1.0, 2.0)]:
        with pytest.raises(DataError):
            frame_window(*args)
    with pytest.raises(UnreadableSample, match="clip.mp4: time window"):
        frame_window(100, 25.0, 4.0, 5.0, path="clip.mp4")


def test_read_clip(reader, media):
    with reader.open(media["mp4"]) as clip:
        frames, picked = read_clip(clip, 4, train=False)
        assert picked == [5, 15, 25, 35] and indices_of(frames) == picked
        g = torch.Generator().manual_seed(3)
        window = frame_window(clip.num_frames, clip.fps, 0.4, 0.8)    # frames 10..19
        frames, picked = read_clip(clip, 6, train=True, generator=g, window=window)
        assert window == (10, 20) and all(10 <= i < 20 for i in picked)
        assert indices_of(frames) == picked
        with pytest.raises(ValueError):
            read_clip(clip, 4, train=False, window=(30, 50))
