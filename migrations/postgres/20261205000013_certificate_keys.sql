-- Keys registered for a client certificate (TLS_CLIENT_CA): the certificate's subject common
-- name, or a DNS or URI name it carries, that authenticates requests instead of a secret.
ALTER TABLE api_keys ADD COLUMN certificate_subject TEXT;
CREATE INDEX api_keys_certificate_subject_idx ON api_keys (certificate_subject);
