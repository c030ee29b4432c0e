-- A schema-2 state file, written by clipper_core at 1075aa8 (clipper_core/state.py)
-- and dumped with sqlite3's iterdump(); PRAGMA user_version = 2 is set by the test.
BEGIN TRANSACTION;
CREATE TABLE apps (
            name TEXT PRIMARY KEY,
            input_type TEXT NOT NULL,
            default_output TEXT NOT NULL,
            slo_micros INTEGER NOT NULL,
            policy TEXT NOT NULL,
            policy_config TEXT NOT NULL
        );
INSERT INTO "apps" VALUES('shop','doubles','-1',20000,'exp3','{"eta": 0.1}');
INSERT INTO "apps" VALUES('plain','strings','none',100000,'single','{}');
CREATE TABLE current_versions (
            name TEXT PRIMARY KEY,
            version TEXT NOT NULL,
            FOREIGN KEY (name, version) REFERENCES models (name, version) ON DELETE CASCADE
        );
INSERT INTO "current_versions" VALUES('ranker','2');
CREATE TABLE kv (
            namespace TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (namespace, key)
        );
INSERT INTO "kv" VALUES('auth.api_keys','shop','["0000000000000000000000000000000000000000000000000000000000000000", "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"]');
INSERT INTO "kv" VALUES('selection:shop','0','{"policy": "exp3", "state": {"weights": [0.25, 0.75]}}');
INSERT INTO "kv" VALUES('selection:shop','42','{"policy": "exp3", "state": {"weights": [0.5, 0.5]}}');
CREATE TABLE links (
            app TEXT NOT NULL REFERENCES apps (name) ON DELETE CASCADE,
            model_name TEXT NOT NULL,
            PRIMARY KEY (app, model_name)
        );
INSERT INTO "links" VALUES('shop','ranker');
INSERT INTO "links" VALUES('plain','echo');
CREATE TABLE models (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            input_type TEXT NOT NULL,
            labels TEXT NOT NULL,
            container TEXT NOT NULL,
            batch_size INTEGER NOT NULL,
            num_replicas INTEGER NOT NULL,
            cpus TEXT,
            memory_limit_mb INTEGER,
            cache_enabled INTEGER NOT NULL,
            batch_wait_micros INTEGER NOT NULL,
            created_at REAL NOT NULL, queue_capacity INTEGER, batch_timeout REAL,
            PRIMARY KEY (name, version)
        );
INSERT INTO "models" VALUES('ranker','1','doubles','["prod"]','{"kind": "closure", "path": "/m/ranker/1/f.pkl"}',8,2,'[0, 1]',512,1,0,1700000000.0,64,2.5);
INSERT INTO "models" VALUES('ranker','2','doubles','[]','{"kind": "closure", "path": "/m/ranker/2/f.pkl"}',-1,1,NULL,NULL,0,500,1700000100.0,NULL,NULL);
INSERT INTO "models" VALUES('echo','1','strings','[]','{"kind": "python", "module": "x"}',-1,0,NULL,NULL,1,0,1700000200.0,NULL,NULL);
CREATE INDEX links_by_model ON links (model_name);
COMMIT;
