/* The freshness state store: a directory or etcd (statestore.h).
 *
 * The dir backend keeps one small JSON file per volume, DIR/<policy>/<volume>.json, replaced
 * atomically (a temp file written and fsynced, renamed over the record, the directory fsynced;
 * without the fsyncs when the store's no_sync is set)
 * under an exclusive flock of DIR/<policy>, with the comparison made under the same lock: the
 * processes of one host (and of every container that mounts the same directory) move a record
 * one at a time.
 *
 * The etcd backend speaks etcd v3's JSON gateway (POST /v3/kv/range, /v3/kv/txn; keys and values
 * base64) over plain HTTP/1.1 on a socket of its own: one request per connection
 * ("Connection: close"), a deadline per endpoint, endpoints tried in order. A compare-and-swap
 * is one transaction: compare the value the writer started from (or create_revision == 0 for
 * "absent"), put the new one on success, read the current one on failure (so a refusal says what
 * the record is now, and a retry after a lost answer can tell that its own write landed).
 * Why sockets and not a library: Debian ships no static etcd client for C, and libcurl's static
 * archive (libcurl4-openssl-dev) drags nghttp2, libidn2, libpsl, librtmp, libssh2, GSSAPI and
 * LDAP into a launcher that must stay small and reproducible, for two POSTs with a JSON body;
 * the HTTP needed here (one request, a Content-Length or chunked answer, read to EOF) is a
 * hundred lines. TLS is not spoken: reach etcd over a private network (docs/runtime.md,
 * "Freshness state: a directory or etcd"). */
#include "statestore.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT_MS 3000
#define MAX_RESPONSE (1 << 20)

/* ------------------------------------------------------------------ records */

static void tags_text(const struct store_record *rec, char *out, size_t len)
{
    char tag[33], next[33];
    if (!rec) {
        snprintf(out, len, "no record");
        return;
    }
    hex_encode(rec->tag, 16, tag);
    if (rec->has_next) {
        hex_encode(rec->next_tag, 16, next);
        snprintf(out, len, "tag %s (next %s)", tag, next);
    } else {
        snprintf(out, len, "tag %s", tag);
    }
}

static int records_equal(const struct store_record *a, const struct store_record *b)
{
    if (!a || !b) return !a && !b;
    return memcmp(a->tag, b->tag, 16) == 0 && a->has_next == b->has_next &&
           (!a->has_next || memcmp(a->next_tag, b->next_tag, 16) == 0);
}

/* The record's bytes: compact JSON with sorted keys, so the same record is the same bytes (what
 * an etcd compare on the value needs). malloc'd, or NULL. */
static char *record_text(const char *volume, const struct store_record *rec)
{
    char tag[33], next[33];
    json_t *doc = json_object();
    hex_encode(rec->tag, 16, tag);
    json_object_set_new(doc, "schema", json_string(STORE_RECORD_SCHEMA));
    json_object_set_new(doc, "volume", json_string(volume));
    json_object_set_new(doc, "fspf_tag", json_string(tag));
    if (rec->has_next) {
        hex_encode(rec->next_tag, 16, next);
        json_object_set_new(doc, "fspf_tag_next", json_string(next));
    }
    char *text = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(doc);
    return text;
}

/* Parse a record of volume from len bytes: 0, or -1 (err says what is wrong, not the bytes). */
static int record_parse(const char *text, size_t len, const char *volume, const char *where,
                        struct store_record *rec, struct rt_error *err)
{
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
    const char *schema = json_string_value(json_object_get(doc, "schema"));
    const char *vol = json_string_value(json_object_get(doc, "volume"));
    const char *tag = json_string_value(json_object_get(doc, "fspf_tag"));
    const char *next = json_string_value(json_object_get(doc, "fspf_tag_next"));
    memset(rec, 0, sizeof *rec);
    int ok = schema && strcmp(schema, STORE_RECORD_SCHEMA) == 0 && tag && strlen(tag) == 32 &&
             hex_decode(tag, rec->tag, 16) == 0 && (!next || (strlen(next) == 32 && hex_decode(next, rec->next_tag, 16) == 0));
    int same_volume = ok && vol && strcmp(vol, volume) == 0;
    rec->has_next = next != NULL;
    json_decref(doc);
    if (!ok) return rt_fail(err, "%s: the freshness record of volume %s is malformed (expected schema %s)", where,
                            volume, STORE_RECORD_SCHEMA);
    if (!same_volume)
        return rt_fail(err, "%s: the freshness record stored for volume %s names another volume (copied?)", where,
                       volume);
    return 0;
}

static int moved(struct rt_error *err, const char *where, const char *volume, const struct store_record *now,
                 const struct store_record *expected)
{
    char have[96], want[96];
    tags_text(now, have, sizeof have);
    tags_text(expected, want, sizeof want);
    rt_fail(err, "%s: volume %s: the store has %s where the writer started from %s: another writer moved it first",
            where, volume, have, want);
    return STORE_MOVED;
}

/* ------------------------------------------------------------------ opening */

static int valid_policy_name(const char *name)
{
    if (!name || !*name || name[0] == '.' || strlen(name) > 200) return 0;
    for (const char *c = name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '.' ||
              *c == '_' || *c == '-'))
            return 0;
    return 1;
}

/* "http://host:port" (or "host:port"); https is refused: TLS is not spoken here. */
static int parse_endpoint(const char *url, char *host, size_t host_len, char *port, size_t port_len)
{
    const char *p = url;
    if (strncmp(p, "http://", 7) == 0) p += 7;
    else if (strstr(p, "://")) return -1;
    const char *end = p + strcspn(p, "/");
    const char *colon;
    if (*p == '[') {  /* [v6]:port */
        const char *close = memchr(p, ']', (size_t)(end - p));
        if (!close || close[1] != ':') return -1;
        if ((size_t)(close - p - 1) >= host_len) return -1;
        memcpy(host, p + 1, (size_t)(close - p - 1));
        host[close - p - 1] = '\0';
        colon = close + 1;
    } else {
        colon = memchr(p, ':', (size_t)(end - p));
        if (!colon || (size_t)(colon - p) >= host_len || colon == p) return -1;
        memcpy(host, p, (size_t)(colon - p));
        host[colon - p] = '\0';
    }
    size_t n = (size_t)(end - colon - 1);
    if (n == 0 || n >= port_len || (*end && strcmp(end, "/") != 0)) return -1;
    memcpy(port, colon + 1, n);
    port[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (port[i] < '0' || port[i] > '9') return -1;
    return 0;
}

static int open_dir_store(const char *dir, const char *policy, struct store *st, struct rt_error *err)
{
    if (dir[0] != '/') return rt_fail(err, "the state store's dir %s is not an absolute path", dir);
    size_t len = strlen(dir) + strlen(policy) + 2;
    st->dir = malloc(len);
    snprintf(st->dir, len, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", policy);
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return rt_fail(err, "the state directory %s does not exist; mount a volume there (docker run -v "
                            "NAME:%s) or name another one", dir, dir);
    if (mkdir(st->dir, 0700) != 0 && errno != EEXIST)
        return rt_fail(err, "cannot create the state directory %s (%s); make %s writable by the container's "
                            "user", st->dir, strerror(errno), dir);
    if (stat(st->dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return rt_fail(err, "the state directory %s is not a directory", st->dir);
    return 0;
}

int store_open(const void *spec_doc, const char *policy_name, struct store *st, struct rt_error *err)
{
    const json_t *spec = spec_doc;
    memset(st, 0, sizeof *st);
    if (!valid_policy_name(policy_name))
        return rt_fail(err, "the policy name %s cannot name a state directory (letters, digits, '.', '_', '-')",
                       policy_name ? policy_name : "(none)");
    json_t *dir = json_object_get(spec, "dir"), *etcd = json_object_get(spec, "etcd");
    if (!json_is_object(spec) || (dir != NULL) == (etcd != NULL))
        return rt_fail(err, "the state store names neither a dir nor etcd (exactly one of them)");
    if (dir) {
        st->kind = STORE_DIR;
        if (!json_is_string(dir)) return rt_fail(err, "the state store's dir is not a path");
        int rc = open_dir_store(json_string_value(dir), policy_name, st, err);
        if (rc != 0) store_close(st);
        return rc;
    }
    st->kind = STORE_ETCD;
    json_t *endpoints = json_object_get(etcd, "endpoints"), *prefix = json_object_get(etcd, "prefix");
    json_t *timeout = json_object_get(etcd, "timeout_ms");
    if (!json_is_array(endpoints) || json_array_size(endpoints) == 0 || json_array_size(endpoints) > STORE_MAX_ENDPOINTS ||
        (prefix && !json_is_string(prefix)) || (timeout && (!json_is_integer(timeout) || json_integer_value(timeout) <= 0)))
        return rt_fail(err, "the state store's etcd block needs endpoints (1 to %d URLs), a prefix (a string) and "
                            "optionally timeout_ms", STORE_MAX_ENDPOINTS);
    st->prefix = strdup(prefix ? json_string_value(prefix) : "");
    st->timeout_ms = timeout ? (int)json_integer_value(timeout) : DEFAULT_TIMEOUT_MS;
    for (size_t i = 0; i < json_array_size(endpoints); i++) {
        const char *url = json_string_value(json_array_get(endpoints, i));
        char host[256], port[16];
        if (!url || parse_endpoint(url, host, sizeof host, port, sizeof port) != 0) {
            rt_fail(err, "etcd endpoint %s is not http://HOST:PORT (TLS is not spoken: reach etcd's client port over "
                         "a private network)", url ? url : "(not a string)");
            store_close(st);
            return -1;
        }
        st->endpoints[st->endpoint_count++] = strdup(url);
    }
    return 0;
}

void store_close(struct store *st)
{
    free(st->dir);
    free(st->prefix);
    for (size_t i = 0; i < st->endpoint_count; i++) free(st->endpoints[i]);
    memset(st, 0, sizeof *st);
}

void store_describe(const struct store *st, char *out, size_t len)
{
    if (st->kind == STORE_DIR) {
        snprintf(out, len, "the state directory %s", st->dir);
        return;
    }
    size_t n = (size_t)snprintf(out, len, "etcd (");
    for (size_t i = 0; i < st->endpoint_count && n < len; i++)
        n += (size_t)snprintf(out + n, len - n, "%s%s", i ? ", " : "", st->endpoints[i]);
    if (n < len) snprintf(out + n, len - n, ")");
}

int store_open_keys_state(const char *state_json, struct store *st, struct rt_error *err)
{
    json_t *spec = json_loads(state_json, JSON_REJECT_DUPLICATES, NULL);
    json_t *name = json_object_get(spec, "name");
    if (!spec || (name && !json_is_string(name))) {
        json_decref(spec);
        memset(st, 0, sizeof *st);
        return rt_fail(err, "the keys file's \"state\" is not a state store (its name is not a string)");
    }
    int rc = store_open(spec, name ? json_string_value(name) : "default", st, err);
    json_decref(spec);
    return rc;
}

const unsigned char *store_fresh_tag(const struct store_record *rec, const unsigned char *tag)
{
    if (!tag) return NULL;
    if (memcmp(tag, rec->tag, 16) == 0) return rec->tag;
    return rec->has_next && memcmp(tag, rec->next_tag, 16) == 0 ? rec->next_tag : NULL;
}

void *store_spec_parse(const char *text)
{
    return json_loads(text, JSON_REJECT_DUPLICATES, NULL);
}

/* ------------------------------------------------------------------ the dir backend */

/* DIR/<policy>/<volume>.json: bytes of the name other than letters, digits, '_', '-' and a '.'
 * that is not the first are written %XX ("/app/data" -> "%2Fapp%2Fdata.json"), so every name
 * is one file and none is a temp file (".tmp.*") or the lock. */
static void record_path(const struct store *st, const char *volume, char *out, size_t len)
{
    size_t n = (size_t)snprintf(out, len, "%s/", st->dir);
    for (const unsigned char *c = (const unsigned char *)volume; *c && n + 4 < len; c++) {
        int plain = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_' ||
                    *c == '-' || (*c == '.' && c != (const unsigned char *)volume);
        n += plain ? (size_t)snprintf(out + n, len - n, "%c", *c) : (size_t)snprintf(out + n, len - n, "%%%02X", *c);
    }
    snprintf(out + n, len - n, ".json");
}

static int dir_read(struct store *st, const char *volume, struct store_record *rec, struct rt_error *err)
{
    char path[4096];
    record_path(st, volume, path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) return 0;
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        return rt_fail(err, "cannot read the freshness record %s (%s)", path, strerror(e));
    }
    if (sb.st_size > 65536) {
        close(fd);
        return rt_fail(err, "the freshness record %s is malformed (too large)", path);
    }
    char *text = malloc((size_t)sb.st_size + 1);
    int rc = text ? read_full(fd, text, (size_t)sb.st_size) : -1;
    int e = text ? errno : ENOMEM;
    close(fd);
    if (rc == 0) rc = record_parse(text, (size_t)sb.st_size, volume, path, rec, err) == 0 ? 1 : -1;
    else rt_fail(err, "cannot read the freshness record %s (%s)", path, strerror(e));
    free(text);
    return rc;
}

static int dir_cas(struct store *st, const char *volume, const struct store_record *expected,
                   const struct store_record *new_record, struct rt_error *err)
{
    char path[4096], tmp[4200], where[4200];
    record_path(st, volume, path, sizeof path);
    snprintf(where, sizeof where, "the state directory %s", st->dir);
    int dir = open(st->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return rt_fail(err, "cannot open the state directory %s (%s)", st->dir, strerror(errno));
    while (flock(dir, LOCK_EX) != 0)
        if (errno != EINTR) {
            int e = errno;
            close(dir);
            return rt_fail(err, "cannot lock the state directory %s (%s)", st->dir, strerror(e));
        }
    struct store_record now;
    int found = dir_read(st, volume, &now, err);
    int rc = -1;
    if (found < 0) goto out;
    if (!records_equal(found ? &now : NULL, expected)) {
        rc = moved(err, where, volume, found ? &now : NULL, expected);
        goto out;
    }
    char *text = record_text(volume, new_record);
    if (!text) {
        rt_fail(err, "out of memory writing the freshness record of volume %s", volume);
        goto out;
    }
    snprintf(tmp, sizeof tmp, "%s/.tmp.%ld", st->dir, (long)getpid());
    int e = replace_file(path, tmp, text, strlen(text), 1, 0600, !st->no_sync);
    free(text);
    if (e != 0) {
        rt_fail(err, "cannot write the freshness record %s (%s); the state directory must be writable", path,
                strerror(e));
        goto out;
    }
    if (!st->no_sync && fsync(dir) != 0) {
        rt_fail(err, "cannot fsync the state directory %s (%s)", st->dir, strerror(errno));
        goto out;
    }
    rc = STORE_SWAPPED;
out:
    close(dir);  /* releases the lock */
    return rc;
}

int store_sync(struct store *st, const char *volume, struct rt_error *err)
{
    if (st->kind != STORE_DIR) return 0;
    char path[4096];
    record_path(st, volume, path, sizeof path);
    if (fsync_with_dir(path) != 0)
        return rt_fail(err, "cannot fsync the freshness record %s (%s)", path, strerror(errno));
    return 0;
}

/* ------------------------------------------------------------------ HTTP to one endpoint */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for fd to be ready for events before deadline: 0, or -1 (errno ETIMEDOUT or poll's). */
static int wait_for(int fd, short events, long long deadline)
{
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = {fd, events, 0};
        int n = poll(&p, 1, (int)left);
        if (n > 0) return 0;
        if (n == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (errno != EINTR) return -1;
    }
}

/* A connected, non-blocking TCP socket to host:port, or -1 with why (a static string or errno's). */
static int connect_to(const char *host, const char *port, long long deadline, const char **why)
{
    struct addrinfo hints = {0}, *list = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    /* An address needs no resolver (the static launcher has no NSS modules to load). */
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1) hints.ai_flags |= AI_NUMERICHOST;
    else if (strcmp(host, "localhost") == 0) host = "127.0.0.1", hints.ai_flags |= AI_NUMERICHOST;
    int gai = getaddrinfo(host, port, &hints, &list);
    if (gai != 0) {
        *why = gai_strerror(gai);
        return -1;
    }
    int fd = -1;
    *why = "no address";
    for (struct addrinfo *a = list; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        int rc = connect(fd, a->ai_addr, a->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS && wait_for(fd, POLLOUT, deadline) == 0) {
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            errno = soerr;
            rc = soerr ? -1 : 0;
        }
        if (rc == 0) break;
        *why = strerror(errno);
        close(fd);
        fd = -1;
    }
    freeaddrinfo(list);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

static int send_all(int fd, const char *data, size_t len, long long deadline)
{
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_for(fd, POLLOUT, deadline) != 0) return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

/* The whole answer (the server closes the connection): malloc'd into *out, NUL-terminated. */
static int receive_all(int fd, char **out, size_t *out_len, long long deadline)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 1 >= cap) {
            if (cap >= MAX_RESPONSE) {
                free(buf);
                errno = EMSGSIZE;
                return -1;
            }
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n > 0) {
            len += (size_t)n;
        } else if (n == 0) {
            break;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (wait_for(fd, POLLIN, deadline) != 0) {
                free(buf);
                return -1;
            }
        } else {
            int e = errno;
            free(buf);
            errno = e;
            return -1;
        }
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
}

/* The body of an HTTP/1.1 answer in place (chunked decoded): its status, or -1 if it is not one. */
static int http_body(char *resp, size_t len, char **body, size_t *body_len)
{
    int status;
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1) return -1;
    char *end = strstr(resp, "\r\n\r\n");
    if (!end) return -1;
    *end = '\0';
    char *start = end + 4;
    size_t avail = len - (size_t)(start - resp);
    int chunked = strcasestr(resp, "\r\ntransfer-encoding: chunked") != NULL;
    const char *cl = strcasestr(resp, "\r\ncontent-length:");
    if (!chunked) {
        size_t want = cl ? strtoul(cl + 17, NULL, 10) : avail;
        *body = start;
        *body_len = want < avail ? want : avail;
        return status;
    }
    char *in = start, *out = start, *stop = start + avail;
    for (;;) {
        char *eol = strstr(in, "\r\n");
        if (!eol) return -1;
        size_t n = strtoul(in, NULL, 16);
        in = eol + 2;
        if (n == 0) break;
        if ((size_t)(stop - in) < n) return -1;
        memmove(out, in, n);
        out += n;
        in += n + 2;
        if (in > stop) return -1;
    }
    *out = '\0';
    *body = start;
    *body_len = (size_t)(out - start);
    return status;
}

/* POST body to path at one endpoint: 0 and the parsed JSON answer, or -1 with why (one phrase).
 * sent is set once the whole request has gone out (an answer lost after it: the write may have
 * happened). */
static int post_one(const struct store *st, const char *url, const char *path, const char *body, json_t **answer,
                    int *sent, char *why, size_t why_len)
{
    char host[256], port[16];
    parse_endpoint(url, host, sizeof host, port, sizeof port);
    long long deadline = now_ms() + st->timeout_ms;
    const char *reason = NULL;
    int fd = connect_to(host, port, deadline, &reason);
    if (fd < 0) {
        snprintf(why, why_len, "cannot connect: %s", errno == ETIMEDOUT ? "timed out" : reason);
        return -1;
    }
    char head[512];
    size_t body_len = strlen(body);
    int n = snprintf(head, sizeof head,
                     "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n", path, host, port, body_len);
    char *resp = NULL;
    size_t resp_len = 0;
    if (send_all(fd, head, (size_t)n, deadline) != 0 || send_all(fd, body, body_len, deadline) != 0) {
        snprintf(why, why_len, "cannot send: %s", errno == ETIMEDOUT ? "timed out" : strerror(errno));
        close(fd);
        return -1;
    }
    *sent = 1;
    if (receive_all(fd, &resp, &resp_len, deadline) != 0) {
        snprintf(why, why_len, "no answer: %s", errno == ETIMEDOUT ? "timed out" : strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    char *content;
    size_t content_len;
    int status = http_body(resp, resp_len, &content, &content_len);
    int rc = -1;
    if (status < 0) {
        snprintf(why, why_len, "the answer is not HTTP (is this etcd's client port?)");
    } else if (status != 200) {
        snprintf(why, why_len, "HTTP %d from %s (is this etcd v3.4 or later?)", status, path);
    } else if (!(*answer = json_loadb(content, content_len, 0, NULL)) || !json_is_object(*answer)) {
        json_decref(*answer);
        *answer = NULL;
        snprintf(why, why_len, "the answer to %s is not a JSON object", path);
    } else {
        rc = 0;
    }
    free(resp);
    return rc;
}

/* POST to the first endpoint that answers: 0 and the JSON answer, or -1 with one line naming
 * every endpoint tried and why it failed. */
static int etcd_post(const struct store *st, const char *path, const char *body, json_t **answer, int *sent,
                     struct rt_error *err)
{
    char tried[400] = "";
    size_t n = 0;
    *answer = NULL;
    for (size_t i = 0; i < st->endpoint_count; i++) {
        char why[160];
        if (post_one(st, st->endpoints[i], path, body, answer, sent, why, sizeof why) == 0) return 0;
        if (n < sizeof tried)
            n += (size_t)snprintf(tried + n, sizeof tried - n, "%s%s: %s", i ? "; " : "", st->endpoints[i], why);
    }
    return rt_fail(err, "the etcd state store did not answer (%s)", tried);
}

/* ------------------------------------------------------------------ the etcd backend */

static char *base64(const void *data, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

/* Decode base64 text: malloc'd bytes (NUL-terminated) and their length, or NULL. */
static char *unbase64(const char *text, size_t *len)
{
    size_t n = strlen(text);
    if (n % 4) return NULL;
    char *out = malloc(n / 4 * 3 + 1);
    int got = EVP_DecodeBlock((unsigned char *)out, (const unsigned char *)text, (int)n);
    if (got < 0) {
        free(out);
        return NULL;
    }
    if (n && text[n - 1] == '=') got--;
    if (n > 1 && text[n - 2] == '=') got--;
    out[got] = '\0';
    *len = (size_t)got;
    return out;
}

static char *etcd_key(const struct store *st, const char *volume)
{
    size_t len = strlen(st->prefix) + strlen(volume);
    char *key = malloc(len + 1);
    snprintf(key, len + 1, "%s%s", st->prefix, volume);
    char *encoded = base64(key, len);
    free(key);
    return encoded;
}

/* The value of the first kv of a range answer (kvs absent: 0), decoded: 1 and *value, 0, -1. */
static int range_value(json_t *range, char **value, size_t *len)
{
    json_t *kvs = json_object_get(range, "kvs");
    if (!kvs || json_array_size(kvs) == 0) return 0;
    const char *v = json_string_value(json_object_get(json_array_get(kvs, 0), "value"));
    *value = unbase64(v ? v : "", len);
    return *value ? 1 : -1;
}

static int etcd_read(struct store *st, const char *volume, struct store_record *rec, struct rt_error *err)
{
    char *key = etcd_key(st, volume);
    json_t *req = json_pack("{s:s}", "key", key), *answer = NULL;
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    free(key);
    int sent = 0, rc = etcd_post(st, "/v3/kv/range", body, &answer, &sent, err);
    free(body);
    if (rc != 0) return -1;
    char *value = NULL;
    size_t len = 0;
    char where[600];
    store_describe(st, where, sizeof where);
    int found = range_value(answer, &value, &len);
    json_decref(answer);
    if (found < 0) return rt_fail(err, "%s: the value of volume %s is not base64", where, volume);
    if (found == 0) return 0;
    rc = record_parse(value, len, volume, where, rec, err);
    free(value);
    return rc == 0 ? 1 : -1;
}

/* One transaction: if the key's value is compare_value (NULL: the key does not exist), put
 * new_value. 1 swapped, 0 not (and *current, *current_len: the value now, NULL if absent), -1. */
static int etcd_txn(struct store *st, const char *volume, const char *compare_value, size_t compare_len,
                    const char *new_value, char **current, size_t *current_len, int *sent, struct rt_error *err)
{
    char *key = etcd_key(st, volume), *value = base64(new_value, strlen(new_value));
    json_t *compare;
    if (compare_value) {
        char *was = base64(compare_value, compare_len);
        compare = json_pack("{s:s, s:s, s:s, s:s}", "key", key, "result", "EQUAL", "target", "VALUE", "value", was);
        free(was);
    } else {
        compare = json_pack("{s:s, s:s, s:s, s:s}", "key", key, "result", "EQUAL", "target", "CREATE",
                            "create_revision", "0");
    }
    json_t *req = json_pack("{s:[o], s:[{s:{s:s, s:s}}], s:[{s:{s:s}}]}", "compare", compare, "success", "request_put",
                            "key", key, "value", value, "failure", "request_range", "key", key);
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    free(key);
    free(value);
    json_t *answer = NULL;
    int rc = etcd_post(st, "/v3/kv/txn", body, &answer, sent, err);
    free(body);
    if (rc != 0) return -1;
    *current = NULL;
    if (json_is_true(json_object_get(answer, "succeeded"))) {
        json_decref(answer);
        return 1;
    }
    json_t *range = json_object_get(json_array_get(json_object_get(answer, "responses"), 0), "response_range");
    int found = range ? range_value(range, current, current_len) : -1;
    json_decref(answer);
    if (found < 0) {
        char where[600];
        store_describe(st, where, sizeof where);
        return rt_fail(err, "%s: the answer to a transaction on volume %s is not one etcd gives", where, volume);
    }
    return 0;
}

static int etcd_cas(struct store *st, const char *volume, const struct store_record *expected,
                    const struct store_record *new_record, struct rt_error *err)
{
    char where[600];
    store_describe(st, where, sizeof where);
    char *want = expected ? record_text(volume, expected) : NULL, *text = record_text(volume, new_record);
    const char *compare = want;
    size_t compare_len = want ? strlen(want) : 0;
    char *current = NULL, *retry = NULL;
    size_t current_len = 0;
    int rc = -1, sent = 0;
    /* Twice at most: a record equal to `expected` in other bytes (written by another tool) is
     * compared again on its own bytes. */
    for (int attempt = 0; attempt < 2; attempt++) {
        free(current);
        current = NULL;
        int swapped = etcd_txn(st, volume, compare, compare_len, text, &current, &current_len, &sent, err);
        if (swapped < 0) break;
        if (swapped == 1) {
            rc = STORE_SWAPPED;
            break;
        }
        struct store_record now;
        struct rt_error parse_err;
        int have = current != NULL;
        if (have && record_parse(current, current_len, volume, where, &now, &parse_err) != 0) {
            rt_fail(err, "%s", parse_err.msg);
            break;
        }
        if (have && records_equal(&now, new_record) && sent) {  /* an earlier answer was lost: our own write */
            rc = STORE_SWAPPED;
            break;
        }
        if (attempt == 0 && records_equal(have ? &now : NULL, expected) && have) {
            retry = current;
            current = NULL;
            compare = retry;
            compare_len = current_len;
            continue;
        }
        rc = moved(err, where, volume, have ? &now : NULL, expected);
        break;
    }
    free(current);
    free(retry);
    free(want);
    free(text);
    return rc;
}

/* ------------------------------------------------------------------ the API */

static int valid_volume(const char *volume, struct rt_error *err)
{
    if (!volume || !*volume || strlen(volume) > 1000) return rt_fail(err, "a volume name for the state store is empty or too long");
    return 0;
}

int store_read(struct store *st, const char *volume, struct store_record *rec, struct rt_error *err)
{
    if (valid_volume(volume, err) != 0) return -1;
    return st->kind == STORE_DIR ? dir_read(st, volume, rec, err) : etcd_read(st, volume, rec, err);
}

int store_cas(struct store *st, const char *volume, const struct store_record *expected,
              const struct store_record *new_record, struct rt_error *err)
{
    if (valid_volume(volume, err) != 0) return -1;
    return st->kind == STORE_DIR ? dir_cas(st, volume, expected, new_record, err)
                                 : etcd_cas(st, volume, expected, new_record, err);
}
