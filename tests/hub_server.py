"""A Hub-compatible stand-in for tests: the endpoints huggingface_hub and transformers use to push and pull models.

Stores pushed files in memory so the same test can pull them back, and logs every file a commit carried so tests can
tell an upload from a skipped one. Only `TOKEN` may write, only under the `user` namespace; a repo named `refused`
is always refused. Binds to 127.0.0.1 on a free port.
"""

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

TOKEN = "hf_standin_token"
USER = "user"


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.repos = {}  # repo id -> {"files": {path: bytes}, "sha": last commit}
        self.uploads = []  # (repo id, path) for every file a commit carried

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    # -- replies -------------------------------------------------------------------------------------------------
    def reply(self, status, body=b"", headers=None, send_body=True):
        body = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def error(self, status, message, code=None):
        self.reply(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message} if code else
                   {"X-Error-Message": message})

    def authorized(self):
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.error(401, "Invalid credentials in Authorization header")
            return False
        return True

    def body(self):
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def repo(self, repo_id):
        repo = self.server.repos.get(repo_id)
        if repo is None:
            self.error(404, f"Repository Not Found for url: {self.path}", "RepoNotFound")
        return repo

    def repo_info(self, repo_id, repo):
        return {"id": repo_id, "modelId": repo_id, "sha": repo["sha"], "private": False, "disabled": False,
                "gated": False, "tags": [], "siblings": [{"rfilename": path} for path in sorted(repo["files"])]}

    # -- routes --------------------------------------------------------------------------------------------------
    def do_GET(self, send_body=True):
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if parts[:2] == ["api", "whoami-v2"]:
            if self.authorized():
                self.reply(200, {"type": "user", "name": USER, "orgs": [], "auth": {"accessToken": {"role": "write"}}})
        elif parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            repo = self.repo(repo_id)
            if repo is None:
                return
            if len(parts) == 4 or parts[4] == "revision":
                self.reply(200, self.repo_info(repo_id, repo))
            elif parts[4] == "tree":
                prefix = "/".join(parts[6:])
                self.reply(200, [{"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
                                 for path, data in sorted(repo["files"].items()) if path.startswith(prefix)])
            else:
                self.error(404, f"no route {url.path}")
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo_id, path = "/".join(parts[:2]), "/".join(parts[4:])
            repo = self.repo(repo_id)
            if repo is None:
                return
            if path not in repo["files"]:
                self.error(404, f"Entry not found: {path}", "EntryNotFound")
                return
            data = repo["files"][path]
            headers = {"X-Repo-Commit": repo["sha"], "ETag": f'"{git_blob_sha1(data)}"',
                       "Content-Type": "application/octet-stream"}
            self.reply(200, data, headers, send_body=send_body)
        else:
            self.error(404, f"no route {url.path}")

    def do_HEAD(self):
        self.do_GET(send_body=False)

    def do_POST(self):
        parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
        body = self.body()
        if parts == ["api", "validate-yaml"]:
            self.reply(200, {})
            return
        if not self.authorized():
            return
        if parts == ["api", "repos", "create"]:
            request = json.loads(body)
            repo_id = f"{request.get('organization') or USER}/{request['name']}"
            if not repo_id.startswith(f"{USER}/") or request["name"] == "refused":
                self.error(403, f"You don't have the rights to create a model under the namespace of {repo_id}")
            elif repo_id in self.server.repos:  # the Hub answers 409 with the repo's url
                self.reply(409, {"error": "You already created this model repo",
                                 "url": f"{self.server.endpoint}/{repo_id}"})
            else:
                self.server.repos[repo_id] = {"files": {}, "sha": "0" * 40}
                self.reply(200, {"url": f"{self.server.endpoint}/{repo_id}", "name": repo_id})
        elif parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "preupload":
            repo = self.repo("/".join(parts[2:4]))
            if repo is not None:
                files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": git_blob_sha1(repo["files"][f["path"]]) if f["path"] in repo["files"] else None}
                         for f in json.loads(body)["files"]]
                self.reply(200, {"files": files, "commitOid": repo["sha"]})
        elif parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "commit":
            repo_id = "/".join(parts[2:4])
            repo = self.repo(repo_id)
            if repo is None:
                return
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    self.server.uploads.append((repo_id, item["value"]["path"]))
                elif item["key"] == "deletedFile":
                    repo["files"].pop(item["value"]["path"], None)
            repo["sha"] = hashlib.sha1(body + repo["sha"].encode()).hexdigest()
            self.reply(200, {"commitUrl": f"{self.server.endpoint}/{repo_id}/commit/{repo['sha']}",
                             "commitOid": repo["sha"], "pullRequestUrl": None})
        else:
            self.error(404, f"no route {self.path}")
