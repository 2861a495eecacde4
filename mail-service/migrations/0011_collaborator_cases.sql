-- Collaborator: referral cases between practices, their participants, the "Doctor Talk"
-- posts and the files shared in them (encrypted like message attachments).

CREATE TABLE cases (
    id                  uuid PRIMARY KEY,
    owner_id            uuid        NOT NULL,            -- the referring user (SecureMail account)
    owner_practice_id   uuid,
    owner_practice_name text,
    patient_name        text        NOT NULL,            -- PHI: shown to participants only, never logged
    summary             text        NOT NULL DEFAULT '',
    referred_to_id      uuid        NOT NULL,
    status              text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'accepted', 'declined')),
    decline_reason      text,
    created_at          timestamptz NOT NULL,
    accepted_at         timestamptz,                     -- counts against the owner's quota from then on
    declined_at         timestamptz
);
CREATE INDEX cases_owner_accepted ON cases (owner_id) WHERE accepted_at IS NOT NULL;

CREATE TABLE case_participants (
    case_id  uuid        NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
    user_id  uuid        NOT NULL,
    email    text        NOT NULL,
    name     text        NOT NULL DEFAULT '',
    role     text        NOT NULL CHECK (role IN ('owner', 'doctor', 'member', 'patient')),
    added_at timestamptz NOT NULL,
    PRIMARY KEY (case_id, user_id)
);
CREATE INDEX case_participants_user ON case_participants (user_id);

CREATE TABLE case_posts (
    id                  uuid PRIMARY KEY,
    case_id             uuid        NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
    author_id           uuid        NOT NULL,
    author_name         text        NOT NULL DEFAULT '',
    body                text        NOT NULL,
    shared_with_patient boolean     NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL
);
CREATE INDEX case_posts_case ON case_posts (case_id, created_at);

CREATE TABLE case_files (
    id                  uuid PRIMARY KEY,             -- also the blob key and the AES-GCM file id
    case_id             uuid        NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
    post_id             uuid        NOT NULL REFERENCES case_posts (id) ON DELETE CASCADE,
    position            integer     NOT NULL,
    filename            text        NOT NULL,
    content_type        text        NOT NULL,
    size                bigint      NOT NULL,
    sha256              text        NOT NULL,
    wrapped_key         text        NOT NULL,
    created_at          timestamptz NOT NULL
);
CREATE INDEX case_files_post ON case_files (post_id, position);
