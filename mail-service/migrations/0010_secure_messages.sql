-- Secure messages: threads of messages between users, their encrypted attachments, who may
-- start new messages (paid SecureMail, from billing events), practice expiry settings, the
-- accounting of disclosures, and blobs waiting to be deleted.

-- Users with paid SecureMail (billing.securemail.granted / revoked); only they start threads.
CREATE TABLE securemail_accounts (
    user_id    uuid PRIMARY KEY,
    paid_by    uuid,
    granted_at timestamptz NOT NULL
);

-- A practice's own default life of a message (shorter than the service's maximum).
CREATE TABLE practice_settings (
    practice_id         uuid PRIMARY KEY,
    default_expiry_days integer NOT NULL CHECK (default_expiry_days > 0),
    updated_by          uuid,
    updated_at          timestamptz NOT NULL
);

CREATE TABLE messages (
    id                   uuid PRIMARY KEY,
    thread_id            uuid        NOT NULL,           -- the first message's id
    parent_id            uuid,                           -- the message this one replies to
    sender_id            uuid        NOT NULL,
    sender_practice_id   uuid,
    sender_email         text        NOT NULL,           -- for notifications and the digest; never logged
    sender_name          text        NOT NULL DEFAULT '',
    sender_practice_name text,
    subject              text        NOT NULL,
    body                 text        NOT NULL,
    created_at           timestamptz NOT NULL,
    expires_at           timestamptz NOT NULL,
    sender_deleted_at    timestamptz,                    -- removed from the sender's Sent folder
    digest_sent_at       timestamptz,
    attachment_count     integer     NOT NULL DEFAULT 0
);
-- The Sent folder, newest first, keyset-paginated on (created_at, id).
CREATE INDEX messages_sent ON messages (sender_id, created_at DESC, id DESC) WHERE sender_deleted_at IS NULL;
CREATE INDEX messages_thread ON messages (thread_id, created_at);
CREATE INDEX messages_expiry ON messages (expires_at);
CREATE INDEX messages_digest ON messages (expires_at) WHERE digest_sent_at IS NULL AND attachment_count > 0;

CREATE TABLE message_recipients (
    message_id      uuid        NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id         uuid        NOT NULL,
    email           text        NOT NULL,
    created_at      timestamptz NOT NULL,                -- the message's, copied for the inbox index
    first_opened_at timestamptz,                         -- the read receipt the sender sees
    read_at         timestamptz,                         -- read/unread as the recipient marks it
    deleted_at      timestamptz,                         -- removed from the recipient's Inbox
    PRIMARY KEY (message_id, user_id)
);
-- The Inbox, newest first, keyset-paginated on (created_at, message_id).
CREATE INDEX message_recipients_inbox ON message_recipients (user_id, created_at DESC, message_id DESC)
    WHERE deleted_at IS NULL;

CREATE TABLE attachments (
    id           uuid PRIMARY KEY,                       -- also the blob key and the AES-GCM file id
    message_id   uuid        NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    position     integer     NOT NULL,
    filename     text        NOT NULL,                   -- sanitised; never logged
    content_type text        NOT NULL,
    size         bigint      NOT NULL,
    sha256       text        NOT NULL,
    wrapped_key  text        NOT NULL,                   -- the data key, wrapped by a master key
    created_at   timestamptz NOT NULL
);
CREATE INDEX attachments_message ON attachments (message_id, position);

-- Accounting of disclosures: every open and download. Kept after the message expires (ids,
-- times and addresses only, no content), readable by the sender and Support.
CREATE TABLE disclosures (
    id            bigserial PRIMARY KEY,
    message_id    uuid        NOT NULL,
    sender_id     uuid        NOT NULL,
    attachment_id uuid,
    user_id       uuid        NOT NULL,
    action        text        NOT NULL CHECK (action IN ('open', 'download')),
    at            timestamptz NOT NULL,
    ip            text,
    byte_range    text
);
CREATE INDEX disclosures_message ON disclosures (message_id, id);

-- Blobs whose rows (and wrapped keys) are already gone: deleted from storage by the sweeper,
-- so a crash between the database commit and the storage delete leaves no live copy.
CREATE TABLE blob_deletions (
    blob_key   text PRIMARY KEY,
    queued_at  timestamptz NOT NULL
);
