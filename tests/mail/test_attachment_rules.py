import pytest

from msp_mail.attachment_rules import (
    ALLOWED_EXTENSIONS,
    MAX_TOTAL_BYTES,
    AttachmentBudget,
    check_content,
    check_name,
    safe_filename,
)

HELP_PAGE_LIST = """.ai .aif .aifc .aiff .avi .bmp .cpt .dcm .dex .doc .docx .ds2 .eml .eps .gif .hqx .jpe .jpeg
.jpg .log .mid .midi .mif .mov .movie .mp2 .mp3 .mp4 .mpe .mpeg .mpga .obj .oda .pdf .png .ppt .pptx .ps .qt .ra
.ram .rm .rpm .rtf .rtx .rv .smi .smil .stl .text .tif .tiff .txt .text .vcard .vcf .wav .wbxml .wmlc .wmv .word
.xl .xls .xml .xsl .xlsx .zip""".split()


def test_allowlist_is_exactly_the_help_pages_list() -> None:
    assert ALLOWED_EXTENSIONS == {e.lstrip(".") for e in HELP_PAGE_LIST}


@pytest.mark.parametrize("ext", sorted({e.lstrip(".") for e in HELP_PAGE_LIST}))
def test_every_listed_extension_is_accepted_in_any_case(ext: str) -> None:
    assert check_name(f"scan.{ext}") is None
    assert check_name(f"SCAN.{ext.upper()}") is None


@pytest.mark.parametrize("name", ["setup.exe", "a.js", "page.html", "logo.svg", "README", "x.pdf.exe", ".pdf", "run.sh", "doc.pdf "])
def test_other_types_are_refused_naming_the_file(name: str) -> None:
    refusal = check_name(name)
    assert refusal is not None and refusal.code == "file_type_refused"
    assert safe_filename(name) in refusal.message


def test_executable_renamed_to_pdf_is_refused() -> None:
    refusal = check_content("invoice.pdf", b"MZ\x90\x00" + b"\x00" * 60)
    assert refusal is not None and refusal.code == "executable_content"


def test_content_must_match_a_known_signature() -> None:
    assert check_content("x.pdf", b"%PDF-1.7\n") is None
    assert check_content("x.png", b"\x89PNG\r\n\x1a\n....") is None
    assert check_content("x.dcm", b"\x00" * 128 + b"DICM") is None
    assert check_content("x.docx", b"PK\x03\x04rest") is None
    assert check_content("x.pdf", b"<html>").code == "content_mismatch"
    assert check_content("x.dcm", b"\x00" * 132).code == "content_mismatch"
    assert check_content("notes.txt", b"#!/bin/sh\nrm -rf /").code == "executable_content"
    assert check_content("notes.txt", b"plain words") is None


def test_safe_filename_strips_paths_and_quotes() -> None:
    assert safe_filename("../../etc/passwd.txt") == "passwd.txt"
    assert safe_filename('C:\\Users\\me\\x"y.pdf') == "x_y.pdf"
    assert safe_filename("a\r\nContent-Type: evil.pdf") == "a_Content-Type_ evil.pdf"
    assert len(safe_filename("a" * 500 + ".pdf")) <= 180 and safe_filename("a" * 500 + ".pdf").endswith(".pdf")


def test_budget_allows_exactly_the_limit_and_not_one_byte_more() -> None:
    budget = AttachmentBudget()
    assert budget.take(MAX_TOTAL_BYTES - 1) is None
    assert budget.take(1) is None
    refusal = budget.take(1)
    assert refusal is not None and refusal.code == "too_large"
