"""Programs whose output is the oracle for the runtime's fidelity: run the same one unconverted
(or on a plain directory) and under the shield, and compare what they print."""

# Every way Node writes a file, each read back with readFileSync: libuv opens with O_CLOEXEC and
# closes with syscall(SYS_close), writes with write/pwritev, and runs async calls on its threads.
NODE_WRITES = r"""
const fs = require('fs'), fsp = fs.promises, path = require('path');
const dirs = process.argv.slice(require.main ? 2 : 1);  // node -e CODE DIRS, or node FILE DIRS
const big = Buffer.alloc(1 << 20, 0).map((_, i) => (i * 7919) % 251);
const digest = (p) => require('crypto').createHash('sha256').update(fs.readFileSync(p)).digest('hex').slice(0, 16);
(async () => {
  for (const d of dirs) {
    fs.mkdirSync(d, {recursive: true});
    const p = (n) => path.join(d, n);
    fs.writeFileSync(p('sync.txt'), 'hello');
    const fd = fs.openSync(p('fd.txt'), 'w');
    const wrote = fs.writeSync(fd, 'world');
    fs.closeSync(fd);
    await fsp.writeFile(p('big.bin'), big);
    fs.appendFileSync(p('append.txt'), 'a1;');
    fs.appendFileSync(p('append.txt'), 'a2;');
    await fsp.appendFile(p('append.txt'), 'a3;');
    await new Promise((resolve, reject) => {
      const s = fs.createWriteStream(p('stream.txt'));
      s.on('error', reject).on('finish', resolve);
      for (let i = 0; i < 1000; i++) s.write(`line ${i}\n`);
      s.end();
    });
    await new Promise((resolve) => fs.writeFile(p('cb.txt'), 'callback', resolve));
    const h = await fsp.open(p('handle.txt'), 'w+');
    await h.write('filehandle ');
    await h.write(Buffer.from('bytes'), 0, 5, 11);
    await h.truncate(14);
    await h.close();
    console.log(d === dirs[0] ? 'first' : 'second', wrote, fs.readFileSync(p('sync.txt'), 'utf8'),
                fs.readFileSync(p('fd.txt'), 'utf8'), digest(p('big.bin')), fs.statSync(p('big.bin')).size,
                fs.readFileSync(p('append.txt'), 'utf8'), digest(p('stream.txt')), fs.readFileSync(p('cb.txt'), 'utf8'),
                JSON.stringify(fs.readFileSync(p('handle.txt'), 'utf8')), fs.readdirSync(d).sort().join(','));
  }
})().catch((e) => { console.log('failed', e.code, e.message); process.exit(1); });
"""

# Operations whose result (and errno) a volume and an ephemeral region must give as a plain
# directory does: truncate by path, names with a trailing slash, creates in a missing directory,
# the mode of a new file (umask applied) and of a rewritten one. One line per operation.
PYTHON_FILE_OPS = r"""
import errno, os, sys, tempfile
d = sys.argv[1]
p = lambda *n: os.path.join(d, *n)
def run(what, f, *a, **k):
    try:
        r = f(*a, **k)
    except OSError as e:
        r = errno.errorcode[e.errno]
    print(what, r)
def write(path, data, mode='w'):
    with open(path, mode) as f:
        f.write(data)
def read(path):
    with open(path, 'rb') as f:
        return f.read()
def mode(path):
    return oct(os.stat(path).st_mode)
write(p('t.txt'), 'hello world 123')
run('truncate 5', lambda: (os.truncate(p('t.txt'), 5), read(p('t.txt')), os.stat(p('t.txt')).st_size))
run('truncate 70000', lambda: (os.truncate(p('t.txt'), 70000), read(p('t.txt')).rstrip(b'\0'), os.stat(p('t.txt')).st_size))
run('truncate 0', lambda: (os.truncate(p('t.txt'), 0), read(p('t.txt'))))
write(p('t.txt'), 'hello world 123')
run('truncate missing', os.truncate, p('missing.txt'), 0)
run('truncate slash', os.truncate, p('t.txt') + '/', 0)
run('truncate negative', os.truncate, p('t.txt'), -1)
os.mkdir(p('sub'))
run('truncate dir', os.truncate, p('sub'), 0)
def ftruncated():
    with open(p('t.txt'), 'r+b') as f:
        f.truncate(4)
    return read(p('t.txt'))
run('ftruncate', ftruncated)
run('open wb slash', open, p('nx') + '/', 'wb')
run('open rb slash', open, p('nx') + '/', 'rb')
run('open file slash', open, p('t.txt') + '/', 'rb')
run('open file slash wb', open, p('t.txt') + '/', 'wb')
run('open file slash dot', os.open, p('t.txt') + '/.', os.O_RDONLY)
run('open through file', os.open, p('t.txt', 'x'), os.O_RDONLY)
run('create through file', os.open, p('t.txt', 'x'), os.O_WRONLY | os.O_CREAT, 0o644)
run('stat file slash', lambda: os.stat(p('t.txt') + '/').st_size)
run('stat dir slash', lambda: os.path.isdir(p('sub') + '/'))
run('unlink file slash', os.unlink, p('t.txt') + '/')
run('rename to slash', os.rename, p('t.txt'), p('u.txt') + '/')
run('create in missing dir', os.open, p('missing', 'x'), os.O_WRONLY | os.O_CREAT, 0o644)
run('mkstemp in missing dir', tempfile.mkstemp, dir=p('missing'))
run('open w in missing dir', open, p('missing', 'y'), 'w')
os.umask(0o022)
fd = os.open(p('m600'), os.O_WRONLY | os.O_CREAT, 0o600)
run('fstat new 0600', lambda: oct(os.fstat(fd).st_mode))
os.write(fd, b'x'); os.close(fd)
run('stat new 0600', mode, p('m600'))
write(p('m644'), 'x')
run('stat new default', mode, p('m644'))
os.umask(0o077)
write(p('m-umask'), 'x')
run('stat new umask 077', mode, p('m-umask'))
os.chmod(p('m644'), 0o640)
write(p('m644'), 'rewritten')
run('stat rewritten 0640', mode, p('m644'))
with open(p('m644')) as f:
    run('fstat read 0640', lambda: oct(os.fstat(f.fileno()).st_mode))
os.rename(p('m644'), p('m644-moved'))
run('stat renamed 0640', mode, p('m644-moved'))
print('names', sorted(os.listdir(d)))
"""

# Symlinks and hard links in a directory (a volume, an ephemeral region, or a plain one as the
# oracle): create, readlink, lstat/stat and open through a link (to a file, a directory, a missing
# name, by an absolute path), O_NOFOLLOW, listings, rename, unlink, rmdir. One line per step.
PYTHON_LINK_OPS = r"""
import errno, os, sys
d = sys.argv[1]
os.chdir(d)
def e(f, *a, **k):
    try:
        r = f(*a, **k)
        return r
    except OSError as x:
        return errno.errorcode[x.errno]
open('f.txt', 'w').write('hello world')
print('symlink', e(os.symlink, 'f.txt', 'l'), e(os.symlink, 'f.txt', 'l'))
print('readlink', e(os.readlink, 'l'), e(os.readlink, 'f.txt'))
print('lstat', os.path.islink('l'), os.lstat('l').st_size, 'stat', os.stat('l').st_size)
print('read', open('l').read())
with open('l', 'a') as f: f.write('!')
print('write through', open('f.txt').read())
print('nofollow', e(os.open, 'l', os.O_RDONLY | os.O_NOFOLLOW))
print('list', sorted(os.listdir('.')), sorted((x.name, x.is_symlink(), x.is_file()) for x in os.scandir('.')))
os.mkdir('sub'); open('sub/g', 'w').write('in sub')
print('dirlink', e(os.symlink, 'sub', 'ld'), open('ld/g').read(), sorted(os.listdir('ld')), os.path.isdir('ld'))
open('ld/h', 'w').write('made via link')
print('via link', sorted(os.listdir('sub')), open('sub/h').read())
print('dangling', e(os.symlink, 'nothere', 'dl'), os.path.exists('dl'), os.path.lexists('dl'), e(os.stat, 'dl'))
print('abs', e(os.symlink, os.path.join(d, 'f.txt'), 'al'), open('al').read())
print('rename', e(os.rename, 'l', 'l2'), os.readlink('l2'), open('l2').read(), os.path.lexists('l'))
print('hardlink', e(os.link, 'f.txt', 'hl'))
print('unlink', e(os.unlink, 'l2'), e(os.unlink, 'dl'), e(os.unlink, 'ld'), e(os.unlink, 'al'), os.path.lexists('l2'))
os.mkdir('t'); os.symlink('../f.txt', 't/x')
print('rmdir', e(os.rmdir, 't'), e(os.unlink, 't/x'), e(os.rmdir, 't'))
os.symlink('loop', 'loop'); os.symlink('loop2', 'loop1'); os.symlink('loop1', 'loop2')
print('loop', e(os.stat, 'loop'), e(open, 'loop'), e(os.stat, 'loop1'), os.path.islink('loop2'), e(os.unlink, 'loop'))
os.unlink('loop1'); os.unlink('loop2')
print('final', sorted(os.listdir('.')))
"""

# Node writing from a worker thread and from a spawned node child (child_process.spawn of
# process.execPath), each to every directory given: writeFileSync, fs.promises.writeFile,
# appendFile (sync and promise), a write stream, a FileHandle. Each writer reads its files back
# itself ("self"), then the main thread reads them ("main"). One line per directory, writer, reader.
NODE_THREADS_AND_CHILDREN = r"""
const fs = require('fs'), path = require('path');
const { Worker } = require('worker_threads');
const { spawn } = require('child_process');
const cluster = require('cluster');
if (!cluster.isPrimary) {  // a cluster worker: 200 appends to one file shared with the other worker, one file of its own
  const d = process.env.CLUSTER_DIR, id = process.env.CLUSTER_N;
  for (let i = 0; i < 200; i++) fs.appendFileSync(path.join(d, 'cluster-shared.txt'), 'worker ' + id + ' line ' + i + String.fromCharCode(10));
  fs.writeFileSync(path.join(d, 'cluster-' + id + '.txt'), 'own file of worker ' + id);
  process.exit(0);
}
function clusterWrites(d) {
  return new Promise((resolve) => {
    const workers = [1, 2].map((n) => cluster.fork({CLUSTER_DIR: d, CLUSTER_N: String(n)}));
    let left = workers.length, codes = [];
    for (const w of workers) w.on('exit', (code) => { codes.push(code); if (--left === 0) resolve(codes.join(',')); });
  });
}
const WRITER = `
const fs = require('fs'), fsp = fs.promises, path = require('path'), crypto = require('crypto');
const NAMES = ['sync.txt', 'promise.txt', 'append.txt', 'stream.txt', 'handle.txt'];
function readBack(d, who) {
  return NAMES.map((n) => {
    try {
      const b = fs.readFileSync(path.join(d, who + '-' + n));
      return n + '=' + (b.length > 40 ? b.length + ':' + crypto.createHash('sha256').update(b).digest('hex').slice(0, 12)
                                       : JSON.stringify(b.toString()));
    } catch (e) { return n + '=' + e.code; }
  }).join(' ');
}
async function write(d, who) {
  const p = (n) => path.join(d, who + '-' + n);
  fs.mkdirSync(d, {recursive: true});
  fs.writeFileSync(p('sync.txt'), 'sync by ' + who);
  await fsp.writeFile(p('promise.txt'), 'promise by ' + who);
  fs.appendFileSync(p('append.txt'), 'a1;');
  await fsp.appendFile(p('append.txt'), 'a2;');
  fs.appendFileSync(p('append.txt'), 'a3;');
  await new Promise((resolve, reject) => {
    const s = fs.createWriteStream(p('stream.txt'));
    s.on('error', reject).on('finish', resolve);
    for (let i = 0; i < 500; i++) s.write(who + ' line ' + i + String.fromCharCode(10));
    s.end();
  });
  const h = await fsp.open(p('handle.txt'), 'w');
  await h.write('handle by ' + who);
  await h.close();
  return readBack(d, who);
}
`;
const { readBack } = new Function('require', WRITER + 'return {readBack, write};')(require);
const THREAD = WRITER + `
const { parentPort, workerData } = require('worker_threads');
write(workerData.d, 'thread').then((r) => parentPort.postMessage(r), (e) => parentPort.postMessage('failed ' + e.code));
`;
const CHILD = WRITER + `
write(process.argv[1], 'child').then((r) => console.log(r), (e) => { console.log('failed', e.code); process.exit(1); });
`;
(async () => {
  for (const d of process.argv.slice(2)) {
    fs.mkdirSync(d, {recursive: true});
    const byThread = await new Promise((resolve, reject) => {
      const w = new Worker(THREAD, {eval: true, workerData: {d}});
      let said = '';
      w.on('message', (m) => { said = m; }).on('error', reject).on('exit', (code) => resolve(said + ' exit=' + code));
    });
    console.log(d, 'thread self:', byThread);
    console.log(d, 'thread main:', readBack(d, 'thread'));
    const byChild = await new Promise((resolve, reject) => {
      const c = spawn(process.execPath, ['-e', CHILD, d], {stdio: ['ignore', 'pipe', 'inherit']});
      let out = '';
      c.stdout.on('data', (b) => { out += b; });
      c.on('error', reject).on('close', (code) => resolve(out.trim() + ' exit=' + code));
    });
    console.log(d, 'child self:', byChild);
    console.log(d, 'child main:', readBack(d, 'child'));
    const codes = await clusterWrites(d);
    const shared = fs.readFileSync(path.join(d, 'cluster-shared.txt'), 'utf8').split(String.fromCharCode(10)).filter((l) => l);
    const own = [1, 2].map((id) => { try { return fs.readFileSync(path.join(d, 'cluster-' + id + '.txt'), 'utf8'); } catch (e) { return e.code; } });
    console.log(d, 'cluster:', 'exit=' + codes, shared.length + ' lines', new Set(shared).size + ' distinct', own.join(';'));
    console.log(d, 'listing:', fs.readdirSync(d).sort().join(','));
  }
})().catch((e) => { console.log('failed', e.code, e.message); process.exit(1); });
"""
