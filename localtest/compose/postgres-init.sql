-- Sample single-column audit table for the compose test profiles (structured-log-transfer's layout).
CREATE TABLE IF NOT EXISTS audit_logs (
    id         BIGSERIAL PRIMARY KEY,
    is_sent    BOOLEAN     NOT NULL DEFAULT false,
    message    JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS audit_logs_unsent ON audit_logs (created_at, id) WHERE NOT is_sent;
INSERT INTO audit_logs (message, created_at)
SELECT jsonb_build_object('audit_event', jsonb_build_object(
           'actor', jsonb_build_object('user_id', 'user-' || (n % 7)),
           'operation', 'READ',
           'target', jsonb_build_object('path', '/v1/profiles/' || n),
           'date_time', to_char(now() - (n || ' minutes')::interval AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))),
       now() - (n || ' minutes')::interval
FROM generate_series(1, 40) AS n;
