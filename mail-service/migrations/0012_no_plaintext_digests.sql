-- Attachments no longer keep a SHA-256 of their plaintext. The sealed chunks authenticate
-- the whole file (file id, chunk index and last-chunk flag in each chunk's associated data,
-- size recorded), so the digest added no integrity; it did let a reader of this database
-- confirm a guess at a file's content, and hashing cost as much CPU as the rest of storing.
ALTER TABLE attachments DROP COLUMN sha256;
ALTER TABLE case_files DROP COLUMN sha256;
