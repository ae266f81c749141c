DROP TABLE bill_mismatches;
DROP TABLE bill_lines;
DROP TABLE bill_days;
