"""The help page's attachment rules, as pure functions (no I/O).

- Only the listed file types, by extension, case-insensitive; nothing else.
- Where a type has a known signature, the first bytes must match it, so an executable
  renamed to .pdf is refused. Executable signatures are refused under any extension.
- At most 300 MB for all attachments of one message together (enforced while streaming by
  the caller, with `AttachmentBudget`)."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# "300MB total for ALL attachments (per sent email)". Counted in binary megabytes, as the
# file managers our users read sizes from do, so a file shown as "300 MB" fits.
MAX_TOTAL_BYTES = 300 * 1024 * 1024
SNIFF_BYTES = 132  # DICOM's "DICM" sits at offset 128

# Exactly the help page's list (".text" appears twice there).
ALLOWED_EXTENSIONS = frozenset(
    """ai aif aifc aiff avi bmp cpt dcm dex doc docx ds2 eml eps gif hqx jpe jpeg jpg log mid midi
    mif mov movie mp2 mp3 mp4 mpe mpeg mpga obj oda pdf png ppt pptx ps qt ra ram rm rpm rtf rtx rv
    smi smil stl text tif tiff txt vcard vcf wav wbxml wmlc wmv word xl xls xml xsl xlsx zip""".split()
)

_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_ISO_MEDIA_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def _riff(kind: bytes):
    return lambda h: h[:4] == b"RIFF" and h[8:12] == kind


def _iff(*kinds: bytes):
    return lambda h: h[:4] == b"FORM" and h[8:12] in kinds


def _starts(*prefixes: bytes):
    return lambda h: h.startswith(prefixes)


_SIGNATURES = {
    "pdf": _starts(b"%PDF-"),
    "ai": _starts(b"%PDF-", b"%!PS"),
    "png": _starts(b"\x89PNG\r\n\x1a\n"),
    "gif": _starts(b"GIF87a", b"GIF89a"),
    "jpg": _starts(b"\xff\xd8\xff"),
    "jpeg": _starts(b"\xff\xd8\xff"),
    "jpe": _starts(b"\xff\xd8\xff"),
    "bmp": _starts(b"BM"),
    "tif": _starts(b"II*\x00", b"MM\x00*"),
    "tiff": _starts(b"II*\x00", b"MM\x00*"),
    "zip": _starts(*_ZIP),
    "docx": _starts(*_ZIP),
    "xlsx": _starts(*_ZIP),
    "pptx": _starts(*_ZIP),
    "doc": _starts(_OLE),
    "xls": _starts(_OLE),
    "ppt": _starts(_OLE),
    "dcm": lambda h: h[128:132] == b"DICM",
    "mp4": lambda h: h[4:8] in _ISO_MEDIA_BOXES,
    "mov": lambda h: h[4:8] in _ISO_MEDIA_BOXES,
    "qt": lambda h: h[4:8] in _ISO_MEDIA_BOXES,
    "avi": _riff(b"AVI "),
    "wav": _riff(b"WAVE"),
    "aif": _iff(b"AIFF", b"AIFC"),
    "aiff": _iff(b"AIFF", b"AIFC"),
    "aifc": _iff(b"AIFF", b"AIFC"),
    "mid": _starts(b"MThd"),
    "midi": _starts(b"MThd"),
    "mp3": lambda h: h.startswith(b"ID3") or (len(h) > 1 and h[0] == 0xFF and h[1] & 0xE0 == 0xE0),
    "wmv": _starts(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),
    "mpeg": _starts(b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"),
    "mpg": _starts(b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"),
    "mpe": _starts(b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"),
    "rtf": _starts(b"{\\rtf"),
    "ps": _starts(b"%!PS"),
    "eps": _starts(b"%!PS", b"\xc5\xd0\xd3\xc6"),
}

# Refused whatever the name says: Windows PE, ELF, Mach-O, scripts with a shebang.
_EXECUTABLE = (b"MZ", b"\x7fELF", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"#!")


@dataclass(frozen=True)
class Refusal:
    code: str  # file_type_refused | content_mismatch | executable_content | too_large
    message: str


def extension_of(filename: str) -> str:
    name = filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    return ext.lower() if dot and stem else ""


def check_name(filename: str) -> Refusal | None:
    ext = extension_of(filename)
    if ext not in ALLOWED_EXTENSIONS:
        shown = f".{ext}" if ext else "a file without an extension"
        return Refusal(
            "file_type_refused",
            f"“{safe_filename(filename)}” cannot be attached: {shown} is not an accepted file type.",
        )
    return None


def check_content(filename: str, head: bytes) -> Refusal | None:
    """`head` is the file's first SNIFF_BYTES bytes (fewer if the file is shorter)."""
    shown = safe_filename(filename)
    if head.startswith(_EXECUTABLE):
        return Refusal("executable_content", f"“{shown}” looks like a program, which cannot be attached.")
    matches = _SIGNATURES.get(extension_of(filename))
    if matches is not None and head and not matches(head):
        return Refusal(
            "content_mismatch",
            f"“{shown}” does not contain what its .{extension_of(filename)} name says, so it was refused.",
        )
    return None


_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\/:*?<>|]+')


def safe_filename(filename: str, max_length: int = 180) -> str:
    """A display/download name: no path, no control or quoting characters, bounded length."""
    name = unicodedata.normalize("NFC", filename).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).strip(" .") or "attachment"
    if len(name) > max_length:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: max_length - len(ext) - 1] + "." + ext) if dot and len(ext) < 16 else name[:max_length]
    return name


class AttachmentBudget:
    """Counts the bytes of all attachments of one message while they stream in."""

    def __init__(self, limit: int = MAX_TOTAL_BYTES) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> Refusal | None:
        self.used += n
        if self.used > self.limit:
            return Refusal(
                "too_large",
                f"Attachments may total at most {self.limit // (1024 * 1024)} MB per message.",
            )
        return None


# The Content-Type a download is served with: decided by us from the (allowed) extension,
# never taken from the uploader. Types a browser could render as a page or run as script
# (xml, xsl, eml...) are served as plain text or octet-stream; downloads also carry
# `Content-Disposition: attachment` and `X-Content-Type-Options: nosniff`.
_CONTENT_TYPES = {
    "pdf": "application/pdf", "png": "image/png", "gif": "image/gif", "jpg": "image/jpeg", "jpeg": "image/jpeg",
    "jpe": "image/jpeg", "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff", "zip": "application/zip",
    "doc": "application/msword", "xls": "application/vnd.ms-excel", "ppt": "application/vnd.ms-powerpoint",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "dcm": "application/dicom", "mp4": "video/mp4", "mov": "video/quicktime", "qt": "video/quicktime",
    "avi": "video/x-msvideo", "wmv": "video/x-ms-wmv", "mpeg": "video/mpeg", "mpe": "video/mpeg", "mpg": "video/mpeg",
    "movie": "video/x-sgi-movie", "mp3": "audio/mpeg", "mp2": "audio/mpeg", "mpga": "audio/mpeg", "wav": "audio/wav",
    "aif": "audio/aiff", "aiff": "audio/aiff", "aifc": "audio/aiff", "mid": "audio/midi", "midi": "audio/midi",
    "ra": "audio/x-realaudio", "ram": "audio/x-pn-realaudio", "rm": "application/vnd.rn-realmedia",
    "txt": "text/plain; charset=utf-8", "text": "text/plain; charset=utf-8", "log": "text/plain; charset=utf-8",
    "rtf": "application/rtf", "ps": "application/postscript", "eps": "application/postscript",
    "ai": "application/postscript", "vcf": "text/vcard", "vcard": "text/vcard", "stl": "model/stl",
}


def content_type_for(filename: str) -> str:
    return _CONTENT_TYPES.get(extension_of(filename), "application/octet-stream")
