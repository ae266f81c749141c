DROP TABLE paid_messages;
