-- The Nexmark tables, as the views of Flink's nexmark (queries/ddl_views.sql)
-- declare them: one table per kind of event, all cut from one event stream (so
-- declare them with the same options). Flink declares one source table with a
-- ROW column per kind and a computed `dateTime`, and views over it; Sluice has
-- neither ROW nor computed columns, so the connector serves each view's rows as
-- a table. 'nexmark.max-events' counts events of all three kinds, as Flink's
-- 'events.num'; 'nexmark.events-per-second' is the rate in event time (Flink's
-- 'first-event.rate'). See README: Nexmark.

CREATE TABLE person (
    id  BIGINT,
    name  VARCHAR,
    emailAddress  VARCHAR,
    creditCard  VARCHAR,
    city  VARCHAR,
    state  VARCHAR,
    `dateTime`  TIMESTAMP(3),
    extra  VARCHAR,
    WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND
) WITH (
    'connector' = 'nexmark',
    'nexmark.table' = 'person',
    'nexmark.max-events' = '1000000',
    'nexmark.events-per-second' = '10000'
);

CREATE TABLE auction (
    id  BIGINT,
    itemName  VARCHAR,
    description  VARCHAR,
    initialBid  BIGINT,
    reserve  BIGINT,
    `dateTime`  TIMESTAMP(3),
    expires  TIMESTAMP(3),
    seller  BIGINT,
    category  BIGINT,
    extra  VARCHAR,
    WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND
) WITH (
    'connector' = 'nexmark',
    'nexmark.table' = 'auction',
    'nexmark.max-events' = '1000000',
    'nexmark.events-per-second' = '10000'
);

CREATE TABLE bid (
    auction  BIGINT,
    bidder  BIGINT,
    price  BIGINT,
    channel  VARCHAR,
    url  VARCHAR,
    `dateTime`  TIMESTAMP(3),
    extra  VARCHAR,
    WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND
) WITH (
    'connector' = 'nexmark',
    'nexmark.table' = 'bid',
    'nexmark.max-events' = '1000000',
    'nexmark.events-per-second' = '10000'
);
