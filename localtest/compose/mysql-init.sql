-- Sample single-column audit table for the compose test profiles (structured-log-transfer's layout).
CREATE TABLE IF NOT EXISTS audit_logs (
    id         BIGINT AUTO_INCREMENT PRIMARY KEY,
    is_sent    TINYINT(1)  NOT NULL DEFAULT 0,
    message    JSON        NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY audit_logs_queue (is_sent, created_at, id)
);
INSERT INTO audit_logs (message, created_at)
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 40)
SELECT JSON_OBJECT('audit_event', JSON_OBJECT(
           'actor', JSON_OBJECT('user_id', CONCAT('user-', n % 7)),
           'operation', 'READ',
           'target', JSON_OBJECT('path', CONCAT('/v1/profiles/', n)),
           'date_time', DATE_FORMAT(UTC_TIMESTAMP(3) - INTERVAL n MINUTE, '%Y-%m-%dT%H:%i:%s.%fZ'))),
       UTC_TIMESTAMP(6) - INTERVAL n MINUTE
FROM seq;
