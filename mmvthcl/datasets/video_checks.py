"""Cheap checks that tell why a video file cannot be trained on.

A K400 download holds a few broken files among 240k: missing, empty, cut
short by an interrupted copy, or not videos at all. Decord reports these as
"Error reading N bytes..." deep inside a dataloader worker, and a truncated
AVI makes it crash the whole process (segmentation fault, measured with
decord 0.6.0), so the container is checked in Python before decord sees it:
only box / chunk headers are read, a few dozen bytes per file.
"""
import os
import os.path as osp
import struct
from typing import Optional

#: top-level ISO-BMFF (MP4 / MOV) boxes that may open a file
_BMFF_FIRST_BOXES = {
    b'ftyp', b'styp', b'moov', b'mdat', b'free', b'skip', b'wide', b'pnot',
    b'uuid', b'sidx', b'pdin', b'meta', b'junk'
}
_MAX_BOXES = 10000  # bound the walk of a pathological file


class BadVideoError(ValueError):
    """A video (or its annotation) cannot be used for training.

    A ``ValueError`` so that callers expecting the previous errors of the
    sampling transforms still catch it.

    Args:
        message (str): The full message (it names the file).
        path (str, optional): The file.
        reason (str, optional): Why it is bad, without the path.
    """

    def __init__(self,
                 message: str,
                 path: Optional[str] = None,
                 reason: Optional[str] = None) -> None:
        # DataLoader workers re-raise errors in the main process by calling
        # the class with one message argument, so that must stay valid
        super().__init__(message)
        self.path = path
        self.reason = reason if reason is not None else message


def video_path(filename: str) -> str:
    """The path ``DecordInit`` opens (it adds ``.mp4`` to bare names)."""
    if osp.splitext(filename)[0] == filename:
        return filename + '.mp4'
    return filename


def _is_fourcc(code: bytes) -> bool:
    return all(32 <= c < 127 for c in code)


def _walk_bmff(f, size: int) -> Optional[str]:
    offset, seen = 0, set()
    for _ in range(_MAX_BOXES):
        f.seek(offset)
        header = f.read(16)
        if len(header) < 8:
            break  # the end, or a few padding bytes some muxers leave
        box_size, box_type = struct.unpack('>I4s', header[:8])
        if not _is_fourcc(box_type):
            break  # not a box header: trailing junk players ignore too
        name = box_type.decode('latin-1')
        if box_size == 1:  # 64-bit size follows
            if len(header) < 16:
                return f'truncated MP4: box {name!r} header cut at the end'
            box_size = struct.unpack('>Q', header[8:16])[0]
        elif box_size == 0:  # the box runs to the end of the file
            box_size = size - offset
        if box_size < 8:
            return (f'corrupt MP4: box {name!r} at byte {offset} declares '
                    f'{box_size} bytes')
        if offset + box_size > size:
            return (f'truncated MP4: box {name!r} at byte {offset} needs '
                    f'{box_size} bytes but the file ends after '
                    f'{size - offset} (an interrupted download or copy?)')
        seen.add(box_type)
        offset += box_size
    if b'moov' not in seen:
        return ("incomplete MP4: no 'moov' box (the index of the frames); "
                'an interrupted download or copy?')
    return None


def _walk_riff(f, size: int) -> Optional[str]:
    # an AVI is one RIFF chunk, or several (AVIX) beyond 1 GB
    offset = 0
    for _ in range(_MAX_BOXES):
        f.seek(offset)
        header = f.read(8)
        if len(header) < 8:
            return None  # the end, or padding
        chunk_id, chunk_size = struct.unpack('<4sI', header)
        if offset and chunk_id != b'RIFF':
            return None  # trailing junk after the RIFF chunks
        end = offset + 8 + chunk_size + (chunk_size & 1)
        if offset + 8 + chunk_size > size:
            return (f'truncated AVI: chunk {chunk_id.decode("latin-1")!r} '
                    f'at byte {offset} needs {chunk_size + 8} bytes but the '
                    f'file ends after {size - offset} (an interrupted '
                    'download or copy?)')
        offset = end
    return None


def probe_video_file(path: str) -> Optional[str]:
    """Why a local video file is unusable, or None when it looks fine.

    Checks that the file exists, is a non-empty regular file that can be
    read, and, for MP4/MOV and AVI containers, that the file holds every byte
    its headers announce (and an MP4 its ``moov`` index). Other containers
    (MKV, WebM, ...) are left to the decoder.

    Args:
        path (str): The file.

    Returns:
        str | None: The reason, without the path.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 'file not found'
    except OSError as e:
        return f'cannot be accessed ({e.strerror or e})'
    if osp.isdir(path):
        return 'is a directory, not a video file'
    size = st.st_size
    if size == 0:
        return 'empty file (0 bytes)'
    try:
        with open(path, 'rb') as f:
            head = f.read(12)
            if head[:4] == b'RIFF' and head[8:12] == b'AVI ':
                return _walk_riff(f, size)
            if len(head) >= 8 and head[4:8] in _BMFF_FIRST_BOXES:
                return _walk_bmff(f, size)
    except OSError as e:
        return f'cannot be read ({e.strerror or e})'
    return None


def file_start(path: str, n: int = 16) -> bytes:
    """The first ``n`` bytes of a file (for error messages), or b''."""
    try:
        with open(path, 'rb') as f:
            return f.read(n)
    except OSError:
        return b''
