-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d).
-- One database per service: user-service owns `users`, pay-service owns `pay`.
-- Each service creates its tables itself (its embedded migrations run at start).
CREATE DATABASE users OWNER wxmp;
CREATE DATABASE pay OWNER wxmp;
