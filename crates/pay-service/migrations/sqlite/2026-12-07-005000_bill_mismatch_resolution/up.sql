-- A mismatch someone has looked into: when, and what they found (ResolveBillMismatch).
ALTER TABLE bill_mismatches ADD COLUMN resolved_at BIGINT;
ALTER TABLE bill_mismatches ADD COLUMN resolution TEXT NOT NULL DEFAULT '';
