DROP TABLE IF EXISTS guard_claims;
