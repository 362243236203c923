import hashlib


def test_put_get_roundtrip(client):
    r = client.put("/files/x/y.bin", content=b"abc")
    assert r.status_code == 201
    assert r.json()["sha256"] == hashlib.sha256(b"abc").hexdigest()
    r = client.get("/files/x/y.bin")
    assert r.status_code == 200 and r.content == b"abc"
