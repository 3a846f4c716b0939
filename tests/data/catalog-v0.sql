-- A catalog as the first proxy left it (schema version 0, 24 Nov 2026): no
-- version, no work queue or totals, no names.settled, and copies without
-- the time they were made (copies.since).
BEGIN TRANSACTION;
CREATE TABLE names (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL
);
INSERT INTO "names" VALUES('a.txt',2);
CREATE TABLE files (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    blob TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    replicas INTEGER NOT NULL,
    created REAL NOT NULL
);
INSERT INTO "files" VALUES('a.txt',2,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',5,'abababababababababababababababababababababababababababababababab',2,1.0);
CREATE TABLE copies (
    blob TEXT NOT NULL,
    server TEXT NOT NULL,
    PRIMARY KEY (blob, server)
);
INSERT INTO "copies" VALUES('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','s1');
INSERT INTO "copies" VALUES('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','s2');
CREATE TABLE intents (
    blob TEXT NOT NULL,
    server TEXT NOT NULL,
    PRIMARY KEY (blob, server)
);
CREATE TABLE garbage (
    blob TEXT NOT NULL,
    server TEXT NOT NULL,
    PRIMARY KEY (blob, server)
);
CREATE TABLE servers (
    id TEXT PRIMARY KEY,
    zone TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    capacity INTEGER NOT NULL,
    used INTEGER NOT NULL,
    blobs INTEGER NOT NULL
);
COMMIT;
