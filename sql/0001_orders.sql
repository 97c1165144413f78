-- The reference application's table, as the seed had it.
CREATE TABLE IF NOT EXISTS public.orders (
    id            serial PRIMARY KEY,
    customer_name varchar(255) NOT NULL,
    product_name  varchar(255) NOT NULL,
    status        varchar(20)  NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'shipped', 'delivered')),
    updated_at    timestamptz  NOT NULL DEFAULT now()
);

-- updated_at stays current whoever writes the row (the API, psql, another app).
CREATE OR REPLACE FUNCTION public.orders_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS orders_touch_updated_at ON public.orders;
CREATE TRIGGER orders_touch_updated_at
    BEFORE UPDATE ON public.orders
    FOR EACH ROW EXECUTE FUNCTION public.orders_touch_updated_at();
