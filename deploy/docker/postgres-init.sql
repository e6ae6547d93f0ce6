-- Runs once, when the postgres container initialises its data volume:
-- the platform's role and its development database (the same as the local stack).
CREATE ROLE cdp LOGIN CREATEDB PASSWORD 'cdp';
CREATE DATABASE cdp_dev OWNER cdp;
