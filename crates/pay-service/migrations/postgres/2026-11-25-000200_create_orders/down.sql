DROP TABLE pay_notifications;
DROP TABLE orders;
