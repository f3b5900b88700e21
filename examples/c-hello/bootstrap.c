/*
 * hello as the smallest custom runtime: a static C `bootstrap` speaking the
 * Lambda Runtime API over one keep-alive HTTP/1.1 connection, with no
 * runtime client library. Every event gets {"message":"Hello, world!"}.
 * MODE=init_fail in the environment makes it exit 1 at once (a plain
 * process start, exec to exit).
 *
 * Built by the `provided` bench: cc -O2 -static -o bootstrap bootstrap.c
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define API "/2018-06-01/runtime/invocation/"
#define BODY "{\"message\":\"Hello, world!\"}"

static char buf[1 << 20];

static void die(const char *what) {
  perror(what);
  exit(2);
}

static void send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0)
      die("write");
    p += w;
    n -= (size_t)w;
  }
}

/* Reads one response: headers into buf (NUL-terminated), then the body
 * (Content-Length bytes, at most what buf holds) after them. Returns the
 * body's offset in buf and its length in *body_len. */
static size_t read_response(int fd, size_t *body_len) {
  size_t have = 0;
  char *end = NULL;
  while (!end) {
    if (have == sizeof buf - 1)
      die("headers too long");
    ssize_t r = read(fd, buf + have, sizeof buf - 1 - have);
    if (r <= 0)
      die("read");
    have += (size_t)r;
    buf[have] = 0;
    end = strstr(buf, "\r\n\r\n");
  }
  size_t head = (size_t)(end - buf) + 4;
  size_t len = 0;
  for (char *line = strstr(buf, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n"))
    if (strncasecmp(line + 2, "Content-Length:", 15) == 0)
      len = strtoul(line + 17, NULL, 10);
  if (head + len > sizeof buf - 1)
    die("body too long");
  while (have < head + len) {
    ssize_t r = read(fd, buf + have, head + len - have);
    if (r <= 0)
      die("read body");
    have += (size_t)r;
  }
  *body_len = len;
  return head;
}

/* The value of header `name` (with its colon) in the headers in buf. */
static int header(const char *name, char *out, size_t cap) {
  size_t n = strlen(name);
  for (char *line = strstr(buf, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
    if (line[2] == '\r')
      break;
    if (strncasecmp(line + 2, name, n) == 0) {
      char *v = line + 2 + n;
      while (*v == ' ')
        v++;
      size_t len = strcspn(v, "\r");
      if (len >= cap)
        return -1;
      memcpy(out, v, len);
      out[len] = 0;
      return 0;
    }
  }
  return -1;
}

int main(void) {
  const char *mode = getenv("MODE");
  if (mode && strcmp(mode, "init_fail") == 0)
    return 1;
  const char *api = getenv("AWS_LAMBDA_RUNTIME_API");
  if (!api)
    die("AWS_LAMBDA_RUNTIME_API is not set");
  char host[64];
  const char *colon = strrchr(api, ':');
  if (!colon || (size_t)(colon - api) >= sizeof host)
    die("AWS_LAMBDA_RUNTIME_API is not host:port");
  memcpy(host, api, (size_t)(colon - api));
  host[colon - api] = 0;
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
    die("AWS_LAMBDA_RUNTIME_API host");
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0)
    die("connect");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

  static char req[512];
  for (;;) {
    const char *next = "GET " API "next HTTP/1.1\r\nHost: api\r\n\r\n";
    send_all(fd, next, strlen(next));
    size_t len;
    read_response(fd, &len);
    char id[128];
    if (header("Lambda-Runtime-Aws-Request-Id:", id, sizeof id) != 0)
      die("no Lambda-Runtime-Aws-Request-Id");
    int n = snprintf(req, sizeof req,
                     "POST " API "%s/response HTTP/1.1\r\nHost: api\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     id, strlen(BODY), BODY);
    if (n < 0 || (size_t)n >= sizeof req)
      die("request id too long");
    send_all(fd, req, (size_t)n);
    read_response(fd, &len);
  }
}
