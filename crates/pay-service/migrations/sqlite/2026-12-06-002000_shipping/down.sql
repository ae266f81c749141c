DROP TABLE message_pushes;
DROP TABLE shipments;
