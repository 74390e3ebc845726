// Applies the views of views.json with the reference implementation (sof-js) to NDJSON files.
//   node run.mjs VIEWS.json DATA_DIR OUT.json   (index.js, path.js, validate.js of sof-js beside)
import fs from 'fs'
import { evaluate } from './index.js'

const [viewsPath, dir, outPath] = process.argv.slice(2)
const views = JSON.parse(fs.readFileSync(viewsPath, 'utf8'))
const out = views.map((v, i) => {
  const file = `${dir}/${v.resource}.000.ndjson`
  const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : ''
  const resources = text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l))
  try {
    return { view: i, rows: evaluate(v, resources, false) }
  } catch (e) {
    return { view: i, error: String(e) }
  }
})
fs.writeFileSync(outPath, JSON.stringify(out))
