ALTER TABLE bill_mismatches DROP COLUMN resolution;
ALTER TABLE bill_mismatches DROP COLUMN resolved_at;
