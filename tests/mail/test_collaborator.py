"""Collaborator referral cases through mail-service's API: referral, accept/decline, Doctor
Talk with files, participants, patients seeing only what is shared, and the quota of 10
accepted cases per SecureMail account."""
from __future__ import annotations

import uuid

from messages_kit import DICOM, PDF, Stack, compose


async def refer(stack: Stack, owner, doctor_email: str, patient: str = "Ana Lopez"):  # noqa: ANN001, ANN201
    return await stack.call("POST", "/cases", owner, json_body={
        "patient_name": patient, "summary": "Impacted third molar, please evaluate.", "refer_to": doctor_email})


async def test_referral_accepted_doctor_talk_file_and_removed_participant(stack: Stack) -> None:
    referrer = await stack.user("dr.ref@home.example", await stack.practice("Home Dental"), paid=True)
    surgeon = await stack.user("dr.surgeon@oral.example", await stack.practice("Oral Surgery Group"))
    assistant = await stack.user("assistant@home.example", referrer.practice_id)
    stranger = await stack.user("x@else.example", await stack.practice("Else"), paid=True)

    opened = await refer(stack, referrer, surgeon.email)
    assert opened.status == 201, opened.body
    case_id = opened.body["id"]
    assert opened.body["status"] == "pending"

    # The referred doctor sees the pending case; nobody else does.
    assert (await stack.call("GET", f"/cases/{case_id}", surgeon)).body["patient_name"] == "Ana Lopez"
    assert (await stack.call("GET", f"/cases/{case_id}", stranger)).status == 404
    assert (await stack.call("POST", f"/cases/{case_id}/accept", stranger)).status == 404
    assert (await stack.call("POST", f"/cases/{case_id}/accept", referrer)).status == 403
    # Posting waits for the acceptance.
    early = await stack.call("POST", f"/cases/{case_id}/posts", referrer, json_body={"body": "hi"})
    assert early.status == 409

    accepted = await stack.call("POST", f"/cases/{case_id}/accept", surgeon)
    assert accepted.status == 200 and accepted.body["status"] == "accepted"
    assert (await stack.call("POST", f"/cases/{case_id}/accept", surgeon)).status == 409

    # The surgeon posts a file in Doctor Talk; the referrer downloads it byte-identical.
    post = await stack.call("POST", f"/cases/{case_id}/files", surgeon,
                            data=compose({"body": "CBCT attached."}, [("cbct.dcm", DICOM)]))
    assert post.status == 201, post.body
    file_id = post.body["files"][0]["id"]
    got = await stack.call("GET", f"/cases/{case_id}/files/{file_id}", referrer)
    assert got.status == 200 and got.raw == DICOM
    assert got.headers["Content-Type"] == "application/dicom"
    # Same attachment rules: an executable is refused, naming the file.
    bad = await stack.call("POST", f"/cases/{case_id}/files", surgeon,
                           data=compose({"body": "x"}, [("tool.exe", b"MZ\x90")]))
    assert bad.status == 415 and bad.body["details"]["file"] == "tool.exe"

    # The owner adds a colleague, who sees the workspace, then removes them: access ends at once.
    added = await stack.call("POST", f"/cases/{case_id}/participants", referrer,
                             json_body={"email": assistant.email, "role": "member"})
    assert added.status == 201
    assert (await stack.call("POST", f"/cases/{case_id}/participants", surgeon,
                             json_body={"email": stranger.email, "role": "member"})).status == 403
    assert (await stack.call("GET", f"/cases/{case_id}/files/{file_id}", assistant)).raw == DICOM
    removed = await stack.call("DELETE", f"/cases/{case_id}/participants/{assistant.id}", referrer)
    assert removed.status == 204
    assert (await stack.call("GET", f"/cases/{case_id}", assistant)).status == 404
    assert (await stack.call("GET", f"/cases/{case_id}/files/{file_id}", assistant)).status == 404
    assert (await stack.call("POST", f"/cases/{case_id}/posts", assistant, json_body={"body": "x"})).status == 404
    assert (await stack.call("GET", "/cases", assistant)).body["cases"] == []

    # Strangers and guessed ids: 404.
    assert (await stack.call("GET", f"/cases/{case_id}/files/{file_id}", stranger)).status == 404
    assert (await stack.call("GET", f"/cases/{uuid.uuid4()}", referrer)).status == 404
    assert (await stack.call("GET", f"/cases/{case_id}/files/{uuid.uuid4()}", referrer)).status == 404

    # Notifications name no patient, post or file.
    notes = [m for m in await stack.emails() if m["template"] == "generic_notice"]
    assert {m["to"] for m in notes} >= {surgeon.email, referrer.email, assistant.email}
    for note in notes:
        for secret in ("Ana Lopez", "molar", "CBCT", "cbct.dcm"):
            assert secret not in repr(note)


async def test_patient_sees_only_what_is_shared(stack: Stack) -> None:
    referrer = await stack.user("dr.ref@home.example", await stack.practice("Home Dental"), paid=True)
    surgeon = await stack.user("dr.surgeon@oral.example", await stack.practice("Oral Surgery Group"))
    case_id = (await refer(stack, referrer, surgeon.email)).body["id"]
    await stack.call("POST", f"/cases/{case_id}/accept", surgeon)

    added = await stack.call("POST", f"/cases/{case_id}/participants", referrer,
                             json_body={"email": "ana.patient@example.org", "role": "patient"})
    assert added.status == 201
    patient_id = next(p["user_id"] for p in added.body["participants"] if p["role"] == "patient")
    invited = await stack.auth_pool.fetchval("SELECT status FROM users WHERE id = $1", uuid.UUID(patient_id))
    assert invited == "invited"  # a new address: auth-service invited them
    patient = type(referrer)(patient_id, "ana.patient@example.org", None)

    private = await stack.call("POST", f"/cases/{case_id}/files", surgeon,
                               data=compose({"body": "Between us doctors."}, [("private.pdf", PDF)]))
    shared = await stack.call("POST", f"/cases/{case_id}/files", surgeon,
                              data=compose({"body": "Your treatment plan.", "shared_with_patient": True},
                                           [("plan.pdf", PDF)]))
    view = await stack.call("GET", f"/cases/{case_id}", patient)
    assert [p["body"] for p in view.body["posts"]] == ["Your treatment plan."]
    assert (await stack.call("GET", f"/cases/{case_id}/files/{shared.body['files'][0]['id']}", patient)).raw == PDF
    assert (await stack.call("GET", f"/cases/{case_id}/files/{private.body['files'][0]['id']}", patient)).status == 404
    assert (await stack.call("POST", f"/cases/{case_id}/posts", patient, json_body={"body": "hi"})).status == 403


async def test_eleventh_acceptance_is_refused_with_its_reason(stack: Stack) -> None:
    referrer = await stack.user("dr.ref@home.example", await stack.practice("Home Dental"), paid=True)
    doctors = [await stack.user(f"dr{i}@oral.example", await stack.practice(f"Oral {i}")) for i in range(12)]
    unpaid = await stack.user("free@home.example", referrer.practice_id)
    assert (await refer(stack, unpaid, doctors[0].email)).status == 403

    cases = [(await refer(stack, referrer, d.email)).body["id"] for d in doctors]
    # Declining does not count; pending cases do not count.
    assert (await stack.call("POST", f"/cases/{cases[11]}/decline", doctors[11], json_body={"reason": "Not my field"})).status == 200
    for case_id, doctor in list(zip(cases, doctors))[:10]:
        assert (await stack.call("POST", f"/cases/{case_id}/accept", doctor)).status == 200
    refused = await stack.call("POST", f"/cases/{cases[10]}/accept", doctors[10])
    assert refused.status == 422
    assert refused.body["error"] == "case_quota_reached"
    assert "10 accepted Collaborator cases" in refused.body["message"]
    assert "Home Dental" in refused.body["message"]
    still = await stack.call("GET", f"/cases/{cases[10]}", doctors[10])
    assert still.body["status"] == "pending"
    declined = await stack.call("GET", f"/cases/{cases[11]}", referrer)
    assert declined.body["status"] == "declined" and declined.body["decline_reason"] == "Not my field"
    assert (await stack.call("GET", f"/cases/{cases[11]}", doctors[11])).status == 404
