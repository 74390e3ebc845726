-- SMART Backend Services clients: a JWKS inline or a JWKS URL, and the scopes they may get.
CREATE TABLE auth_clients (
    client_id  text        PRIMARY KEY,
    jwks       jsonb,
    jwks_url   text,
    scopes     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((jwks IS NULL) <> (jwks_url IS NULL))
);

-- Client-assertion `jti`s seen, kept until the assertion expires: a replay is refused.
CREATE TABLE auth_jtis (
    client_id  text        NOT NULL,
    jti        text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX auth_jtis_expiry ON auth_jtis (expires_at);
