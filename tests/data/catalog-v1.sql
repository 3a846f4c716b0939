-- A catalog as the proxy before several proxies left it (schema version 1): two files,
-- one in its second version, a REPLICAS raised, and an unfinished upload.
BEGIN TRANSACTION;
CREATE TABLE copies (
    blob TEXT NOT NULL,
    server TEXT NOT NULL,
    since REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (blob, server)
);
INSERT INTO "copies" VALUES('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','s1',1.0);
INSERT INTO "copies" VALUES('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','s2',1.0);
INSERT INTO "copies" VALUES('cccccccccccccccccccccccccccccccc','s2',3.0);
CREATE TABLE files (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    blob TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    replicas INTEGER NOT NULL,
    created REAL NOT NULL,
    servers TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
INSERT INTO "files" VALUES('docs/b.txt',2,'cccccccccccccccccccccccccccccccc',6,'efefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefef',1,3.0,'s2');
INSERT INTO "files" VALUES('kept.bin',1,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',1000,'abababababababababababababababababababababababababababababababab',3,1.0,'s1 s2');
CREATE TABLE garbage (
    blob TEXT NOT NULL,
    server TEXT NOT NULL,
    PRIMARY KEY (blob, server)
);
INSERT INTO "garbage" VALUES('bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb','s1');
CREATE TABLE intents (
    blob TEXT NOT NULL,
    server TEXT NOT NULL,
    PRIMARY KEY (blob, server)
);
INSERT INTO "intents" VALUES('dddddddddddddddddddddddddddddddd','s1');
INSERT INTO "intents" VALUES('dddddddddddddddddddddddddddddddd','s3');
CREATE TABLE names (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL,
    settled INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "names" VALUES('kept.bin',1,1);
INSERT INTO "names" VALUES('docs/b.txt',2,2);
INSERT INTO "names" VALUES('unfinished',1,0);
CREATE TABLE servers (
    id TEXT PRIMARY KEY,
    zone TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    capacity INTEGER NOT NULL,
    used INTEGER NOT NULL,
    blobs INTEGER NOT NULL
);
CREATE TABLE totals (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO "totals" VALUES('files',2);
INSERT INTO "totals" VALUES('bytes',1006);
INSERT INTO "totals" VALUES('wanted',4);
CREATE TABLE work (
    name TEXT PRIMARY KEY,
    due REAL NOT NULL,
    rank INTEGER NOT NULL DEFAULT 0,
    gen INTEGER NOT NULL DEFAULT 0,
    wanted INTEGER,
    have INTEGER,
    moves INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "work" VALUES('kept.bin',0.0,0,0,NULL,NULL,0);
CREATE INDEX copies_by_server_blob ON copies (server, blob);
CREATE INDEX work_in_order ON work (rank, due);
CREATE INDEX work_by_due ON work (due);
COMMIT;
PRAGMA user_version = 1;
