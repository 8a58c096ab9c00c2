-- With mutual TLS: the certificate that registered an instance (the SHA-256 of its subject,
-- as piece tickets bind it); only that certificate keeps it alive or registers it again.
-- Empty: registered without TLS.
ALTER TABLE instances ADD COLUMN owner TEXT NOT NULL DEFAULT '';
