-- PUT /v1/users/me with the profile update of the reference lesson.
-- The body must stay identical to PUT_BODY in bench/variants.py: the harness checks the route
-- with that body before loading it with wrk. wrk computes Content-Length itself, and keeps any
-- headers given with -H (credentials), so only the method, body and content type are set here.
wrk.method = "PUT"
wrk.body = '{"email": "alice@example.com", "age": 34, "bio": "hello"}'
wrk.headers["Content-Type"] = "application/json"
